// Base64 (RFC 4648 section 4, the standard alphabet with padding), as SCRAM
// (RFC 5802) and etcd's JSON gateway use it.
#pragma once

#include <optional>
#include <string>
#include <string_view>

namespace pgrelay::protocol {

std::string base64_encode(std::string_view in);
// nullopt on characters outside the alphabet, bad padding, or bits after the
// last byte that are not zero (so each byte string has one encoding).
std::optional<std::string> base64_decode(std::string_view in);

}  // namespace pgrelay::protocol
