// The cryptography the authentication exchanges need, as a small interface:
// SHA-256, HMAC-SHA-256, PBKDF2 (SCRAM's Hi()), MD5, random bytes and a
// constant-time comparison. protocol/crypto_openssl.cpp implements it with
// OpenSSL's libcrypto; nothing else in protocol/ depends on OpenSSL.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace pgrelay::protocol::crypto {

using Digest = std::array<uint8_t, 32>;  // SHA-256

Digest sha256(std::string_view data);
Digest hmac_sha256(std::string_view key, std::string_view data);
// RFC 5802's Hi(str, salt, i): PBKDF2 with HMAC-SHA-256, one 32-byte block.
Digest pbkdf2_sha256(std::string_view password, std::string_view salt, uint32_t iterations);
// Lower-case hex MD5, as PostgreSQL's md5 passwords spell it.
std::string md5_hex(std::string_view data);
// Cryptographically strong random bytes; false if the generator failed.
bool random_bytes(uint8_t* out, size_t n);
// Whether a and b (n bytes each) are equal, in time independent of where they differ.
bool equal(const void* a, const void* b, size_t n);

inline std::string_view as_view(const Digest& d) {
    return {reinterpret_cast<const char*>(d.data()), d.size()};
}

}  // namespace pgrelay::protocol::crypto
