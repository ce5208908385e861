// crypto.hpp with OpenSSL's libcrypto (OpenSSL 3: EVP digests, HMAC(),
// PKCS5_PBKDF2_HMAC, RAND_bytes, CRYPTO_memcmp).
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>

#include <stdexcept>

#include "protocol/crypto.hpp"

namespace pgrelay::protocol::crypto {

namespace {
// These fail only when libcrypto itself is broken (out of memory): not input.
[[noreturn]] void broken(const char* what) { throw std::runtime_error(std::string("OpenSSL: ") + what + " failed"); }
}  // namespace

Digest sha256(std::string_view data) {
    Digest d{};
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), d.data(), &len, EVP_sha256(), nullptr) != 1 || len != d.size())
        broken("SHA-256");
    return d;
}

Digest hmac_sha256(std::string_view key, std::string_view data) {
    Digest d{};
    unsigned int len = 0;
    if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()), reinterpret_cast<const unsigned char*>(data.data()),
              data.size(), d.data(), &len) ||
        len != d.size())
        broken("HMAC-SHA-256");
    return d;
}

Digest pbkdf2_sha256(std::string_view password, std::string_view salt, uint32_t iterations) {
    Digest d{};
    if (PKCS5_PBKDF2_HMAC(password.data(), static_cast<int>(password.size()),
                          reinterpret_cast<const unsigned char*>(salt.data()), static_cast<int>(salt.size()),
                          static_cast<int>(iterations), EVP_sha256(), static_cast<int>(d.size()), d.data()) != 1)
        broken("PBKDF2");
    return d;
}

std::string md5_hex(std::string_view data) {
    unsigned char d[16];
    unsigned int len = 0;
    if (EVP_Digest(data.data(), data.size(), d, &len, EVP_md5(), nullptr) != 1 || len != 16) broken("MD5");
    static constexpr char hex[] = "0123456789abcdef";
    std::string out(32, '0');
    for (int i = 0; i < 16; ++i) {
        out[2 * i] = hex[d[i] >> 4];
        out[2 * i + 1] = hex[d[i] & 15];
    }
    return out;
}

bool random_bytes(uint8_t* out, size_t n) { return RAND_bytes(out, static_cast<int>(n)) == 1; }

bool equal(const void* a, const void* b, size_t n) { return CRYPTO_memcmp(a, b, n) == 0; }

}  // namespace pgrelay::protocol::crypto
