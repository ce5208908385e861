// PgBouncer's habit for psql users: connecting to the virtual database
// "pgrelay" on a pooled port, as one of admin_users (authenticated like any
// pooled client), gives SHOW POOLS, SHOW CLIENTS, SHOW SERVERS, SHOW STATS,
// SHOW CONFIG and SHOW HELP, and PAUSE, RESUME and RECONNECT for
// maintenance. Simple Query protocol only. Runs on
// the pool worker's thread, which owns every pool and pooled client, so the
// answers need no locks.
#pragma once

#include <string>
#include <string_view>

#include "proxy/session.hpp"

namespace pgrelay {

inline constexpr std::string_view kAdminDatabase = "pgrelay";

// The whole answer to one Query: RowDescription, DataRows, CommandComplete
// (or an ErrorResponse), then ReadyForQuery.
// PAUSE, RESUME and RECONNECT act on the pools (PAUSE only marks them: the
// caller waits for the servers in use to come back before answering).
std::string admin_console_answer(std::string_view sql, WorkerShared& shared);
// The command as the console matches it: "show  pools ;" -> "SHOW POOLS".
std::string admin_console_command(std::string_view sql);

}  // namespace pgrelay
