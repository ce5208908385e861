// Where pgrelay finds a user's password secret when it authenticates clients
// itself (session and transaction pool modes): the auth_file (PgBouncer's
// userlist.txt format), then auth_query, run as auth_user on the current
// primary. auth_query runs at every login, so a password changed with ALTER
// ROLE counts at once; its last answer per user is kept and used when the
// primary cannot be reached (a failover's leaderless window), so logins keep
// working through one. Owned by the pooled worker thread; secrets are never
// logged.
#pragma once

#include <boost/asio/awaitable.hpp>
#include <chrono>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "protocol/auth.hpp"
#include "proxy/config.hpp"
#include "proxy/router.hpp"
#include "proxy/server_conn.hpp"
#include "topology/source.hpp"

namespace pgrelay {

class AuthStore {
public:
    AuthStore(boost::asio::any_io_executor ex, std::shared_ptr<const Config> cfg, std::shared_ptr<const TlsContexts> tls);
    // Rereads auth_file (at start and on SIGHUP); errors are logged by line.
    void reconfigure(std::shared_ptr<const Config> cfg, std::shared_ptr<const TlsContexts> tls);

    struct Lookup {
        std::optional<protocol::auth::Secret> secret;  // nullopt: no such user (or no password)
        std::string error;                             // set when neither source could answer
        const char* source = "";                       // "auth_file", "auth_query", "cache"
    };
    boost::asio::awaitable<Lookup> lookup(PortRole role, const std::string& user, const std::string& database,
                                          Router& router, const topology::Topology* topo);
    size_t file_users() const noexcept { return file_.size(); }

private:
    boost::asio::awaitable<Lookup> query(PortRole role, const std::string& user, const std::string& database, Router& router,
                                         const topology::Topology* topo);
    boost::asio::any_io_executor ex_;
    std::shared_ptr<const Config> cfg_;
    std::shared_ptr<const TlsContexts> tls_;
    std::map<std::string, protocol::auth::Secret> file_;  // per port config differs only in auth_file path: both loaded
    std::map<std::string, protocol::auth::Secret> file_ro_;
    struct Cached {
        std::optional<protocol::auth::Secret> secret;
    };
    std::map<std::string, Cached> cache_;  // auth_query answers by user
    // Idle auth_user connections by (member, database), reused across logins.
    std::map<std::pair<std::string, std::string>, std::vector<std::unique_ptr<ServerConn>>> conns_;
};

}  // namespace pgrelay
