// Transaction pooling, sans-I/O: a server connection is lent to a client for
// one transaction only, so pgrelay must
//  - know which server message answers which request (ResponseTracker), because
//    it writes messages of its own into the server stream (a Parse of a
//    statement the client prepared on another server, a SET restoring the
//    client's session) whose answers the client must never see;
//  - give protocol-level prepared statements server-side names of its own,
//    shared by every client that prepares the same text (StatementCache,
//    ClientStatements, ServerStatements);
//  - recognise the SETs a client runs and replay them on the next server it
//    gets (parse_set, set_statement, parse_startup_options).
// Message layouts: protocol-message-formats.html; the response rules:
// protocol-flow.html ("Extended Query", "Pipelining", "COPY Operations").
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <list>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "protocol/messages.hpp"

namespace pgrelay::protocol::pool {

// ---------------------------------------------------------------------------
// ResponseTracker

// Flow, per server connection while a client holds it: sent(type, origin) for
// every frontend message written to the server, in write order; received(type)
// for every backend message read from it, in read order (with the decoded
// status for ReadyForQuery). Each answer says whether the message goes to the
// client. The tracker mirrors the server's own rules (postgres.c): an error in
// an extended-protocol message makes the server discard everything up to the
// next Sync, and Sync/Flush read during COPY FROM STDIN are ignored, so the
// queue of expected answers shrinks exactly as the server's does.
// Answers to pgrelay's own messages are dropped, with one exception: an
// ErrorResponse to an inserted Parse/Bind/Describe/Close/Execute is forwarded,
// because the server will skip the client's messages behind it (unless the
// rest of that batch, Sync included, is pgrelay's own too).
class ResponseTracker {
public:
    enum class Origin {
        Client,    // the client's own message: its answers are forwarded
        Inserted,  // written by pgrelay: its answers are dropped
        NopParse,  // a Close of a never-used name standing in for a client's Parse of
                   // a statement this server already has: CloseComplete becomes ParseComplete
    };
    enum class Verdict { Forward, Drop, RewriteAsParseComplete };

    struct Result {
        Verdict verdict = Verdict::Forward;
        bool entry_done = false;       // this message was the last answer to its request
        bool inserted_error = false;   // an ErrorResponse answered a message pgrelay inserted
        bool unexpected = false;       // the message fits no outstanding request: the stream is out of step
        std::optional<TxStatus> ready; // a ReadyForQuery that ended a Sync/Query/FunctionCall
    };

    // `describe_kind` matters for Describe only: 'S' (a statement) answers
    // ParameterDescription before RowDescription/NoData; anything else is a portal.
    void sent(char frontend_type, Origin origin, char describe_kind = 0);
    Result received(char backend_type, std::optional<TxStatus> rfq_status = {});

    bool idle() const noexcept { return entries_.empty(); }
    size_t outstanding() const noexcept { return entries_.size(); }
    // The client's own Query, Sync and FunctionCall messages still awaiting
    // their ReadyForQuery: what the client waits for.
    size_t client_requests() const noexcept;
    // In COPY FROM STDIN: the server asked for data, the client has not ended it.
    bool in_copy_in() const noexcept { return copy_in_; }
    std::optional<TxStatus> last_status() const noexcept { return last_status_; }
    void reset() noexcept;

private:
    struct Entry {
        char type;            // the frontend message type
        Origin origin;
        char describe_kind;
        bool got_parameters;  // Describe 'S': ParameterDescription seen
        uint64_t copy_ends;   // CopyDone/CopyFail sent before this message
    };
    void drop_until_sync();

    std::deque<Entry> entries_;
    std::optional<TxStatus> last_status_;
    bool skipping_ = false;   // an extended error with no Sync sent yet: the server discards until one
    bool copy_in_ = false;    // in COPY FROM STDIN and the client has not ended it yet
    uint64_t copy_ends_ = 0;  // CopyDone/CopyFail sent so far
};

// ---------------------------------------------------------------------------
// Message codecs. Decoders take a frame body (the bytes after the length word)
// and return views into it; they reject truncated bodies, missing NULs and
// trailing bytes. Encoders append a whole message (type, length, body); the
// strings they are given must not contain NUL (decoded ones cannot).

struct ParseMsg {
    std::string_view name, query;
    std::span<const uint8_t> param_types;  // raw: int16 count + count * int32 OID
};
std::optional<ParseMsg> decode_parse(std::span<const uint8_t> body) noexcept;
void encode_parse(std::string& out, std::string_view name, std::string_view query,
                  std::span<const uint8_t> param_types_raw);

struct BindMsg {
    std::string_view portal, statement;
    std::span<const uint8_t> rest;  // formats, parameters, result formats: checked, kept raw
};
std::optional<BindMsg> decode_bind(std::span<const uint8_t> body) noexcept;
void encode_bind(std::string& out, std::string_view portal, std::string_view statement,
                 std::span<const uint8_t> rest);

// Describe and Close: 'S' (statement) or 'P' (portal), then a name.
struct TargetMsg {
    char kind;
    std::string_view name;
};
std::optional<TargetMsg> decode_target(std::span<const uint8_t> body) noexcept;
void encode_describe(std::string& out, char kind, std::string_view name);
void encode_close(std::string& out, char kind, std::string_view name);

void encode_query(std::string& out, std::string_view sql);
void encode_sync(std::string& out);
void encode_parameter_status(std::string& out, std::string_view name, std::string_view value);
void encode_ready_for_query(std::string& out, TxStatus status);
// AuthenticationOk: encode_authentication(out, AuthCode::Ok) in login.hpp.

// CommandComplete's tag ("SET", "SELECT 3", ...).
std::optional<std::string_view> decode_command_complete(std::span<const uint8_t> body) noexcept;

// ---------------------------------------------------------------------------
// Prepared statements. A client's statement name maps to a Statement shared by
// every client of the thread that prepared the same text with the same
// parameter types; on each server it is prepared once, as server_name.

struct Statement {
    uint64_t id = 0;          // never reused within a StatementCache
    std::string server_name;  // "pgrelay_" + id in hex
    std::string query;
    std::string param_types;  // raw, as in ParseMsg
};

// One per pgrelay thread, shared by its clients; not thread-safe. Holds weak
// references only: a Statement lives while a client (ClientStatements) holds it.
class StatementCache {
public:
    std::shared_ptr<const Statement> intern(std::string_view query, std::span<const uint8_t> param_types);
    size_t size() const noexcept;    // live statements
    size_t stored() const noexcept { return map_.size(); }  // entries, expired ones not yet purged included
    void purge();                    // drops expired entries (intern does it now and then)

private:
    std::unordered_multimap<size_t, std::weak_ptr<const Statement>> map_;
    uint64_t next_id_ = 1;
    size_t purge_at_ = 64;  // stored() that triggers the next purge
};

// A client's named statements. The unnamed statement ("") is never stored:
// it is passed through to the server as it is.
class ClientStatements {
public:
    // Replaces any statement of that name; false (and nothing stored) for "".
    bool add(std::string_view name, std::shared_ptr<const Statement> stmt);
    std::shared_ptr<const Statement> find(std::string_view name) const;
    bool erase(std::string_view name);
    void clear() noexcept { map_.clear(); }
    size_t size() const noexcept { return map_.size(); }

private:
    struct Hash {
        using is_transparent = void;
        size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
    };
    std::unordered_map<std::string, std::shared_ptr<const Statement>, Hash, std::equal_to<>> map_;
};

// The statements prepared on one server connection, least recently used
// evicted beyond a cap so a server's memory stays bounded.
class ServerStatements {
public:
    explicit ServerStatements(size_t capacity = 1024) : cap_(capacity ? capacity : 1) {}
    bool has(uint64_t id) const noexcept { return map_.count(id) != 0; }
    // Records `stmt` as prepared (most recently used). When that goes over the
    // cap, returns the server name of the evicted statement: Close it.
    std::optional<std::string> add(const Statement& stmt);
    void touch(uint64_t id) noexcept;  // used now: evicted last
    void erase(uint64_t id) noexcept;
    void clear() noexcept;
    size_t size() const noexcept { return map_.size(); }

private:
    struct Slot {
        std::list<uint64_t>::iterator pos;
        std::string server_name;
    };
    size_t cap_;
    std::list<uint64_t> lru_;  // most recently used first
    std::unordered_map<uint64_t, Slot> map_;
};

// ---------------------------------------------------------------------------
// Session parameters

struct SetCommand {
    std::string name;   // lower-cased unless quoted; "" for RESET ALL
    std::string value;  // raw SQL text after TO/=, trimmed; "" when resetting
    bool reset = false;      // RESET name, SET name TO DEFAULT
    bool reset_all = false;  // RESET ALL
};

// A simple Query that is exactly one session-level SET or RESET of a plain
// parameter: SET [SESSION] name {TO|=} value, SET TIME ZONE value, ... TO
// DEFAULT, RESET name, RESET ALL. nullopt for anything else or anything not
// certain: SET LOCAL, SET TRANSACTION, SET ROLE, SET SESSION AUTHORIZATION,
// comments, a second statement, values that are not a plain list of literals,
// identifiers and numbers.
std::optional<SetCommand> parse_set(std::string_view sql);

// E'...': the same text whatever standard_conforming_strings is. NULs (which
// no SQL text can carry) are dropped.
std::string quote_literal(std::string_view v);
// "SET name TO value", the value quoted unless it is SQL text from parse_set.
std::string set_statement(std::string_view name, std::string_view value, bool value_is_sql);
std::string reset_statement(std::string_view name);

// The StartupMessage "options" parameter, split as the server does: -c
// name=value, -cname=value and --name=value settings, names lower-cased with
// '-' turned into '_'. Other switches are skipped.
std::vector<std::pair<std::string, std::string>> parse_startup_options(std::string_view options);

}  // namespace pgrelay::protocol::pool
