// OpenSSL contexts built from the configuration: one towards clients ([tls]),
// one towards backends ([topology] backend_tls). Built at start and on every
// SIGHUP, so new certificates reach new sessions while open sessions keep the
// context they started with. Asio's SSL headers stay in tls.cpp and
// session.cpp.
#pragma once

#include <memory>
#include <string>

#include "proxy/config.hpp"

namespace boost::asio::ssl {
class context;
}

namespace pgrelay {

struct TlsContexts {
    std::shared_ptr<boost::asio::ssl::context> server;   // null when [tls] has no certificate
    std::shared_ptr<boost::asio::ssl::context> backend;  // null when backend_tls = "disable"
    std::string server_subject;                          // of the loaded certificate, for the log
};

// Loads certificates, keys and CA files; throws ConfigError naming the file.
std::shared_ptr<const TlsContexts> make_tls_contexts(const Config& c);

}  // namespace pgrelay
