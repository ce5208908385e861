// ZkSource (zk_source.hpp). The ZooKeeper header stays in this file: it
// declares a global `struct buffer` that clashes with asio::buffer.
#include "topology/zk_source.hpp"

#include <zookeeper/zookeeper.h>

#include <boost/asio/post.hpp>
#include <boost/asio/steady_timer.hpp>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <unordered_set>
#include <vector>
#include "proxy/log.hpp"
#include "topology/patroni_follower.hpp"

namespace pgrelay::topology {

namespace asio = boost::asio;
using std::chrono::steady_clock;

namespace {
// Ties a ZooKeeper handle's callbacks to the source. Lives until after
// zookeeper_close(), which delivers outstanding completions first (the
// ones it does not are freed after it: HandleCtx::ops).
struct Op;
struct HandleCtx {
    std::weak_ptr<ZkSource::Impl> impl;
    uint64_t generation = 0;
    // The requests in flight on this handle. zookeeper_close() does not
    // always deliver every completion (one outstanding child-watch read was
    // seen lost under LeakSanitizer at shutdown): whatever is still here
    // once it has returned can never complete, and is freed then.
    std::mutex mutex;
    std::unordered_set<Op*> ops;
};
// What a request's completion carries to the control thread.
struct OpResult {
    std::string value;               // aget: the data
    int64_t owner = 0;               // aexists: the ephemeral owner's session
    std::vector<std::string> names;  // aget_children
};
// One request in flight: its continuation runs on the control thread, unless
// the handle it was made on is gone by then (a new session, or stop()).
struct Op {
    HandleCtx* handle;
    std::function<void(ZkSource::Impl&, int rc, const OpResult&)> then;
    Op(HandleCtx* h, std::function<void(ZkSource::Impl&, int rc, const OpResult&)> f) : handle(h), then(std::move(f)) {
        std::lock_guard lock(handle->mutex);
        handle->ops.insert(this);
    }
    ~Op() {
        std::lock_guard lock(handle->mutex);
        handle->ops.erase(this);
    }
    Op(const Op&) = delete;
    Op& operator=(const Op&) = delete;
};
}  // namespace

struct ZkSource::Impl : std::enable_shared_from_this<Impl> {
    asio::io_context& ctx;
    SnapshotHub& hub;
    ZkSourceOptions opts;
    std::string leader_path, members_path, status_path, legacy_optime_path, sync_path, failover_path;

    zhandle_t* zh = nullptr;
    std::unique_ptr<HandleCtx> handle;
    uint64_t generation = 0;
    bool stopped = false;
    bool connected = false;
    bool ever_connected = false;
    std::chrono::milliseconds backoff{500};
    asio::steady_timer retry_timer;
    asio::steady_timer unreachable_timer;
    asio::steady_timer register_timer;

    // Registration: this instance's ephemeral znode and the list of all.
    std::string entry_path;
    bool deregistered = false;
    uint64_t list_round = 0;  // a newer listing makes an older one's reads moot
    std::string last_reg_failure;  // the same failure again is logged at debug

    int pending = 0;            // reads in flight
    bool round_failed = false;  // a read of the current round failed (connection loss...)
    std::shared_ptr<PatroniFollower> follower;

    Impl(asio::io_context& c, SnapshotHub& h, ZkSourceOptions o)
        : ctx(c), hub(h), opts(std::move(o)), retry_timer(c), unreachable_timer(c), register_timer(c) {
        opts.follower.source = "zookeeper";
        opts.follower.leader_event = "leader znode event";
        opts.follower.where = opts.hosts + opts.base;
        follower = PatroniFollower::create(ctx, hub, opts.follower);
        leader_path = opts.base + "/leader";
        members_path = opts.base + "/members";
        status_path = opts.base + "/status";
        legacy_optime_path = opts.base + "/optime/leader";
        sync_path = opts.base + "/sync";
        failover_path = opts.base + "/failover";
        if (opts.registration.enabled) entry_path = opts.registration.path + "/" + opts.registration.self.id;
    }

    // ---- ZooKeeper C callbacks: ZooKeeper's threads, copy and post only ----

    static void on_watch(zhandle_t*, int type, int zstate, const char* path, void* wctx) {
        auto* h = static_cast<HandleCtx*>(wctx);
        auto impl = h->impl.lock();
        if (!impl) return;
        const auto now = steady_clock::now();
        asio::post(impl->ctx, [impl, gen = h->generation, type, zstate, p = std::string(path ? path : ""), now] {
            impl->watch_event(gen, type, zstate, p, now);
        });
    }

    // Each completion posts its continuation.
    static void post_op(std::unique_ptr<Op> op, int rc, OpResult r) {
        auto impl = op->handle->impl.lock();
        if (!impl) return;
        asio::post(impl->ctx, [impl, gen = op->handle->generation, rc, r = std::move(r), then = std::move(op->then)] {
            if (gen != impl->generation || impl->stopped) return;
            then(*impl, rc, r);
        });
    }
    static void op_string(int rc, const char*, const void* data) {
        post_op(std::unique_ptr<Op>(static_cast<Op*>(const_cast<void*>(data))), rc, {});
    }
    static void op_void(int rc, const void* data) {
        post_op(std::unique_ptr<Op>(static_cast<Op*>(const_cast<void*>(data))), rc, {});
    }
    static void op_stat(int rc, const struct Stat* stat, const void* data) {
        OpResult r;
        if (rc == ZOK && stat) r.owner = stat->ephemeralOwner;
        post_op(std::unique_ptr<Op>(static_cast<Op*>(const_cast<void*>(data))), rc, std::move(r));
    }
    static void op_data(int rc, const char* value, int len, const struct Stat*, const void* data) {
        OpResult r;
        if (rc == ZOK && value && len > 0) r.value.assign(value, size_t(len));
        post_op(std::unique_ptr<Op>(static_cast<Op*>(const_cast<void*>(data))), rc, std::move(r));
    }
    static void op_children(int rc, const struct String_vector* strings, const void* data) {
        OpResult r;
        if (rc == ZOK && strings)
            for (int i = 0; i < strings->count; ++i) r.names.emplace_back(strings->data[i]);
        post_op(std::unique_ptr<Op>(static_cast<Op*>(const_cast<void*>(data))), rc, std::move(r));
    }
    Op* op(std::function<void(Impl&, int, const OpResult&)> then) { return new Op(handle.get(), std::move(then)); }

    // Creates each missing parent of the registry path (persistent, empty),
    // then this instance's ephemeral znode.
    void register_self(size_t from = 1) {
        if (!zh || deregistered || !opts.registration.enabled) return;
        const std::string& path = opts.registration.path;
        const size_t slash = path.find('/', from);
        const std::string part = slash == std::string::npos ? path : path.substr(0, slash);
        Op* o = op([slash](Impl& self, int rc, const OpResult&) {
            if (rc != ZOK && rc != ZNODEEXISTS) return self.registration_failed("create " + self.opts.registration.path, rc);
            if (slash == std::string::npos) self.create_entry(0);
            else self.register_self(slash + 1);
        });
        if (const int rc = zoo_acreate(zh, part.c_str(), "", 0, &ZOO_OPEN_ACL_UNSAFE, 0, &Impl::op_string, o); rc != ZOK) {
            delete o;
            registration_failed("create " + part, rc);
        }
    }

    void create_entry(int attempt) {
        if (!zh || deregistered) return;
        const std::string body = instance_json(opts.registration.self);
        Op* o = op([attempt](Impl& self, int rc, const OpResult&) {
            if (rc == ZOK) {
                log::info("zookeeper: registered this instance at {}", self.entry_path);
                self.last_reg_failure.clear();
                return;
            }
            if (rc != ZNODEEXISTS || attempt >= 2) return self.registration_failed("create " + self.entry_path, rc);
            self.check_entry_owner(attempt);
        });
        if (const int rc = zoo_acreate(zh, entry_path.c_str(), body.data(), static_cast<int>(body.size()),
                                       &ZOO_OPEN_ACL_UNSAFE, ZOO_EPHEMERAL, &Impl::op_string, o);
            rc != ZOK) {
            delete o;
            registration_failed("create " + entry_path, rc);
        }
    }

    // The entry exists: ours (a reconnect within the session), or left by a
    // session of ours that has not expired yet (a restart), or another
    // instance's with the same id (a configuration error). Not ours: replaced.
    void check_entry_owner(int attempt) {
        Op* o = op([attempt](Impl& self, int rc, const OpResult& r) {
            if (rc == ZNONODE) return self.create_entry(attempt + 1);
            if (rc != ZOK) return self.registration_failed("check " + self.entry_path, rc);
            const clientid_t* id = self.zh ? zoo_client_id(self.zh) : nullptr;
            if (id && r.owner == id->client_id) return;  // still ours
            log::warn("zookeeper: {} belongs to another session (0x{:x}): an earlier run of this instance, or another "
                      "instance with the same [instance] id; replacing it",
                      self.entry_path, r.owner);
            Op* d = self.op([attempt](Impl& s2, int drc, const OpResult&) {
                if (drc != ZOK && drc != ZNONODE) return s2.registration_failed("delete " + s2.entry_path, drc);
                s2.create_entry(attempt + 1);
            });
            if (const int rc = zoo_adelete(self.zh, self.entry_path.c_str(), -1, &Impl::op_void, d); rc != ZOK) {
                delete d;
                self.registration_failed("delete " + self.entry_path, rc);
            }
        });
        if (const int rc = zoo_aexists(zh, entry_path.c_str(), 0, &Impl::op_stat, o); rc != ZOK) {
            delete o;
            registration_failed("check " + entry_path, rc);
        }
    }

    void registration_failed(const std::string& what, int rc) {
        // Connection loss: the CONNECTED event registers again.
        if (rc == ZCONNECTIONLOSS || rc == ZSESSIONEXPIRED || rc == ZCLOSING || rc == ZOPERATIONTIMEOUT) {
            log::debug("zookeeper: {}: {} (registering again on reconnect)", what, zerror(rc));
            return;
        }
        const std::string msg = what + ": " + zerror(rc);
        if (msg != last_reg_failure)
            log::warn("zookeeper: {}; this instance is not listed for its peers until it can register (retrying every 5 s)",
                      msg);
        else
            log::debug("zookeeper: {} (retrying in 5 s)", msg);
        last_reg_failure = msg;
        register_timer.expires_after(std::chrono::seconds(5));
        register_timer.async_wait([self = shared_from_this(), gen = generation](const boost::system::error_code& ec) {
            if (!ec && gen == self->generation && self->connected) self->register_self();
        });
    }

    // Lists the registry with a child watch and reads every entry; the
    // whole list goes to the peer directory once all reads are back.
    void list_instances() {
        if (!zh || !opts.registration.enabled || !opts.registration.peers) return;
        const uint64_t round = ++list_round;
        const std::string& path = opts.registration.path;
        Op* o = op([round](Impl& self, int rc, const OpResult& r) {
            if (round != self.list_round) return;
            if (rc == ZNONODE) {
                self.opts.registration.peers->update({}, "zookeeper");
                return self.watch_exists(self.opts.registration.path);
            }
            if (rc != ZOK) return;  // connection loss: listed again on reconnect
            auto found = std::make_shared<std::vector<InstanceInfo>>();
            auto left = std::make_shared<size_t>(r.names.size());
            if (r.names.empty()) return self.opts.registration.peers->update({}, "zookeeper");
            for (const auto& name : r.names) {
                const std::string entry = self.opts.registration.path + "/" + name;
                Op* g = self.op([round, found, left, entry, name](Impl& s2, int grc, const OpResult& gr) {
                    if (round != s2.list_round) return;
                    if (grc == ZOK) {
                        // An entry is named by its id: anything else is not one of ours.
                        auto i = parse_instance_json(gr.value);
                        if (i && i->id == name) found->push_back(std::move(*i));
                        else log::warn("zookeeper: {} is not a pgrelay instance entry; ignored", log::printable(entry));
                    }
                    if (--*left == 0) s2.opts.registration.peers->update(std::move(*found), "zookeeper");
                });
                if (zoo_aget(self.zh, entry.c_str(), 0, &Impl::op_data, g) != ZOK) {
                    delete g;
                    --*left;
                }
            }
            if (*left == 0) self.opts.registration.peers->update(std::move(*found), "zookeeper");
        });
        if (zoo_awget_children(zh, path.c_str(), &Impl::on_watch, handle.get(), &Impl::op_children, o) != ZOK) delete o;
    }

    // ---- control thread ----

    void open() {
        if (stopped) return;
        ++generation;
        pending = 0;  // completions of the old handle are ignored by generation
        handle = std::make_unique<HandleCtx>();
        handle->impl = weak_from_this();
        handle->generation = generation;
        zh = zookeeper_init(opts.hosts.c_str(), &Impl::on_watch, static_cast<int>(opts.session_timeout.count()), nullptr,
                            handle.get(), 0);
        if (!zh) {
            log::error("zookeeper: cannot create a client for '{}': {}; retrying in {} ms", opts.hosts,
                       std::strerror(errno), backoff.count());
            handle.reset();
            retry_timer.expires_after(backoff);
            backoff = std::min(backoff * 2, std::chrono::milliseconds(30000));
            retry_timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
                if (!ec) self->open();
            });
            return;
        }
        arm_unreachable_warning();
    }

    // While not connected, say so every few seconds: the one log line an
    // operator needs when ZooKeeper is down at start.
    void arm_unreachable_warning() {
        unreachable_timer.expires_after(std::chrono::seconds(5));
        unreachable_timer.async_wait([self = shared_from_this(), gen = generation](const boost::system::error_code& ec) {
            if (ec || self->stopped || gen != self->generation || self->connected) return;
            if (self->follower->loaded())
                log::warn("zookeeper: still not connected to {}; routing on the last known topology", self->opts.hosts);
            else
                log::warn("zookeeper: cannot reach {}; retrying (new rw connections are held until a primary is known)",
                          self->opts.hosts);
            self->arm_unreachable_warning();
        });
    }

    void close_handle() {
        if (zh) {
            zookeeper_close(zh);  // runs outstanding completions (ZCLOSING) before returning
            zh = nullptr;
        }
        if (handle) {
            std::vector<Op*> never_completed;
            {
                std::lock_guard lock(handle->mutex);
                never_completed.assign(handle->ops.begin(), handle->ops.end());
            }
            for (Op* o : never_completed) delete o;
        }
        handle.reset();
        connected = false;
    }

    void watch_event(uint64_t gen, int type, int zstate, const std::string& path, steady_clock::time_point at) {
        if (gen != generation || stopped) return;
        if (type == ZOO_SESSION_EVENT) {
            if (zstate == ZOO_CONNECTED_STATE) {
                const clientid_t* id = zoo_client_id(zh);
                log::info("zookeeper: connected to {} (session 0x{:x}){}", opts.hosts, id ? id->client_id : 0,
                          ever_connected ? ", re-reading the cluster state" : "");
                if (opts.stats) {
                    opts.stats->connected.store(1, std::memory_order_relaxed);
                    if (ever_connected) {
                        opts.stats->reconnects.fetch_add(1, std::memory_order_relaxed);
                        opts.stats->resyncs.fetch_add(1, std::memory_order_relaxed);
                    }
                }
                connected = true;
                ever_connected = true;
                follower->set_store_reachable(true);
                backoff = std::chrono::milliseconds(500);
                read_all();
                register_self();
                list_instances();
            } else if (zstate == ZOO_CONNECTING_STATE) {
                if (connected)
                    log::warn("zookeeper: connection lost; keeping the last known topology while reconnecting");
                connected = false;
                if (opts.stats) opts.stats->connected.store(0, std::memory_order_relaxed);
                follower->set_store_reachable(false);
                arm_unreachable_warning();
            } else if (zstate == ZOO_EXPIRED_SESSION_STATE) {
                log::warn("zookeeper: session expired; opening a new session and re-reading everything");
                follower->set_store_reachable(false);
                if (opts.stats) {
                    opts.stats->connected.store(0, std::memory_order_relaxed);
                    opts.stats->session_expiries.fetch_add(1, std::memory_order_relaxed);
                }
                close_handle();
                open();
            } else if (zstate == ZOO_AUTH_FAILED_STATE) {
                log::error("zookeeper: authentication failed; retrying in {} ms", backoff.count());
                close_handle();
                retry_timer.expires_after(backoff);
                backoff = std::min(backoff * 2, std::chrono::milliseconds(30000));
                retry_timer.async_wait([self = shared_from_this()](const boost::system::error_code& ec) {
                    if (!ec) self->open();
                });
            }
            return;
        }
        // Reroute latency is measured from the event that announces the new
        // leader key (created or changed), not from the old key's deletion.
        if (path == leader_path && type != ZOO_DELETED_EVENT) follower->note_leader_event(at);
        if (opts.registration.enabled && path == opts.registration.path) {
            list_instances();
            return;
        }
        if (path == members_path && (type == ZOO_CHILD_EVENT || type == ZOO_CREATED_EVENT)) {
            read_children();
        } else if (type == ZOO_CREATED_EVENT || type == ZOO_CHANGED_EVENT || type == ZOO_DELETED_EVENT) {
            read(path);
        }
    }

    void read_all() {
        round_failed = false;
        read_children();
        read(leader_path);
        read(status_path);
        read(legacy_optime_path);
        read(sync_path);
        read(failover_path);
    }

    // The reads of the cluster state count in `pending` until they complete.
    void read(const std::string& path) {
        if (!zh) return;
        Op* o = op([path](Impl& self, int rc, const OpResult& r) { self.data_done(rc, path, r.value); });
        ++pending;
        if (zoo_awget(zh, path.c_str(), &Impl::on_watch, handle.get(), &Impl::op_data, o) != ZOK) {
            delete o;
            --pending;
        }
    }

    void read_children() {
        if (!zh) return;
        Op* o = op([](Impl& self, int rc, const OpResult& r) { self.children_done(rc, r.names); });
        ++pending;
        if (zoo_awget_children(zh, members_path.c_str(), &Impl::on_watch, handle.get(), &Impl::op_children, o) != ZOK) {
            delete o;
            --pending;
        }
    }

    // An absent znode cannot carry a data watch: watch for its creation.
    void watch_exists(const std::string& path) {
        if (!zh) return;
        Op* o = op([path](Impl& self, int rc, const OpResult&) { self.exists_done(rc, path); });
        ++pending;
        if (zoo_awexists(zh, path.c_str(), &Impl::on_watch, handle.get(), &Impl::op_stat, o) != ZOK) {
            delete o;
            --pending;
        }
    }

    void data_done(int rc, const std::string& path, const std::string& value) {
        --pending;
        if (rc == ZOK) {
            apply(path, &value);
        } else if (rc == ZNONODE) {
            apply(path, nullptr);
            watch_exists(path);
        } else {
            // Connection loss and friends: the CONNECTED event re-reads all.
            round_failed = true;
            log::debug("zookeeper: read of {} failed: {}", path, zerror(rc));
        }
        maybe_publish();
    }

    void exists_done(int rc, const std::string& path) {
        --pending;
        // Created between our read and the watch: read it (the members
        // parent needs its children read, which re-arms the child watch).
        if (rc == ZOK) {
            if (path == members_path) read_children();
            else if (opts.registration.enabled && path == opts.registration.path) list_instances();
            else read(path);
        }
        maybe_publish();
    }

    void children_done(int rc, const std::vector<std::string>& names) {
        --pending;
        if (rc == ZOK) {
            std::set<std::string> now(names.begin(), names.end());
            for (const auto& name : follower->member_names())
                if (!now.count(name)) follower->member_gone(name);
            // Read every member (not only new ones): a member that vanished and
            // reappeared between two reads has new data and needs a new watch.
            for (const auto& n : names) read(members_path + "/" + n);
        } else if (rc == ZNONODE) {
            for (const auto& name : follower->member_names()) follower->member_gone(name);
            watch_exists(members_path);
        } else {
            round_failed = true;
        }
        maybe_publish();
    }

    void apply(const std::string& path, const std::string* value) {
        if (path.size() > opts.base.size() + 1 && path.compare(0, opts.base.size() + 1, opts.base + "/") == 0)
            follower->apply_key(std::string_view(path).substr(opts.base.size() + 1), value);
    }

    void maybe_publish() {
        // Only a complete first read is a topology; a round cut short by a
        // connection loss is read again on reconnect.
        if (!follower->loaded()) {
            if (pending > 0 || round_failed) return;
            follower->set_loaded();
        }
        follower->publish();
        // Every read ZooKeeper answered is in: its view is current again.
        if (pending == 0 && !round_failed) follower->note_store_answered();
    }
};

ZkSource::ZkSource(asio::io_context& ctx, SnapshotHub& hub, ZkSourceOptions opts)
    : impl_(std::make_shared<Impl>(ctx, hub, std::move(opts))) {}

ZkSource::~ZkSource() { stop(); }

void ZkSource::start() {
    // The C client logs at INFO to stderr by default, in its own format;
    // pgrelay logs the state changes that matter itself.
    // Level 0 is below ZOO_LOG_LEVEL_ERROR: the client's own logging is off.
    zoo_set_debug_level(log::enabled(log::Level::Debug) ? ZOO_LOG_LEVEL_WARN : static_cast<ZooLogLevel>(0));
    impl_->follower->start();
    impl_->open();
}

void ZkSource::set_member_options(const std::map<std::string, uint32_t>& weights,
                                  const std::vector<std::string>& exclude, bool allow_standby_leader) {
    impl_->follower->set_member_options(weights, exclude, allow_standby_leader);
}

void ZkSource::deregister(std::function<void()> done) {
    Impl& s = *impl_;
    if (s.deregistered || !s.opts.registration.enabled || !s.zh) {
        s.deregistered = true;
        return done();
    }
    s.deregistered = true;
    // Closing the session at stop removes it anyway; this is for the peers
    // to see it go now.
    Op* o = s.op([done](Impl& self, int rc, const OpResult&) {
        if (rc == ZOK || rc == ZNONODE) log::info("zookeeper: deregistered {}", self.entry_path);
        else log::warn("zookeeper: deregistering {}: {}", self.entry_path, zerror(rc));
        done();
    });
    if (zoo_adelete(s.zh, s.entry_path.c_str(), -1, &Impl::op_void, o) != ZOK) {
        delete o;
        done();
    }
}

void ZkSource::stop() {
    if (!impl_ || impl_->stopped) return;
    impl_->stopped = true;
    impl_->retry_timer.cancel();
    impl_->unreachable_timer.cancel();
    impl_->register_timer.cancel();
    impl_->close_handle();
    impl_->follower->stop();
}

}  // namespace pgrelay::topology
