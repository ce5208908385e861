// FrameScanner and the decoders of tracked backend messages (see frames.hpp).
#include "protocol/frames.hpp"

#include <algorithm>
#include <cstring>

namespace pgrelay::protocol {

FrameScanner::Status FrameScanner::next(std::span<const uint8_t> buf, size_t& pos, Frame& out) noexcept {
    if (remaining_ > 0) {
        const size_t take = static_cast<size_t>(std::min<uint64_t>(remaining_, buf.size() - pos));
        pos += take;
        remaining_ -= take;
        if (remaining_ > 0) return Status::NeedMore;
    }
    if (buf.size() - pos < 5) return Status::NeedMore;

    const char type = static_cast<char>(buf[pos]);
    const uint32_t len = read_u32(buf.data() + pos + 1);
    if (len < 4 || len > max_frame_) {
        bad_type_ = type;
        bad_length_ = len;
        return Status::Error;
    }
    out.type = type;
    out.length = len;
    out.offset = pos;
    const size_t have = buf.size() - pos;
    const size_t wire = size_t(len) + 1;
    if (watched(type) && len <= max_watched_) {
        if (have < wire) return Status::NeedMore;
        out.complete = true;
        pos += wire;
        return Status::Frame;
    }
    out.complete = have >= wire;
    const size_t take = std::min(have, wire);
    pos += take;
    remaining_ = wire - take;
    return Status::Frame;
}

std::optional<CancelKey> decode_backend_key_data(std::span<const uint8_t> body) {
    if (body.size() < 4 + kMinCancelSecret || body.size() > 4 + kMaxCancelSecret) return std::nullopt;
    return CancelKey{static_cast<int32_t>(read_u32(body.data())),
                     std::string(reinterpret_cast<const char*>(body.data() + 4), body.size() - 4)};
}

bool rewrite_backend_key_data(std::span<uint8_t> body, const CancelKey& key) noexcept {
    if (body.size() != 4 + key.secret.size()) return false;
    write_u32(body.data(), static_cast<uint32_t>(key.pid));
    std::memcpy(body.data() + 4, key.secret.data(), key.secret.size());
    return true;
}

std::optional<std::string> sasl_without_mechanism(std::span<const uint8_t> body, std::string_view mechanism) {
    constexpr uint32_t kAuthSasl = 10;
    if (body.size() < 5 || read_u32(body.data()) != kAuthSasl || body.back() != 0) return std::nullopt;
    std::string kept;
    bool found = false;
    size_t pos = 4;
    for (;;) {
        if (pos >= body.size()) return std::nullopt;  // the list's terminator is missing
        const auto* start = reinterpret_cast<const char*>(body.data() + pos);
        const size_t len = std::char_traits<char>::length(start);  // the body ends in NUL: bounded
        if (len == 0) break;
        const std::string_view name(start, len);
        if (name == mechanism) found = true;
        else kept.append(name).push_back('\0');
        pos += len + 1;
    }
    if (!found || pos + 1 != body.size()) return std::nullopt;
    std::string out;
    out.push_back('R');
    uint8_t len[4];
    write_u32(len, static_cast<uint32_t>(4 + 4 + kept.size() + 1));
    out.append(reinterpret_cast<const char*>(len), 4);
    write_u32(len, kAuthSasl);
    out.append(reinterpret_cast<const char*>(len), 4);
    out += kept;
    out.push_back('\0');
    return out;
}

std::optional<TxStatus> decode_ready_for_query(std::span<const uint8_t> body) noexcept {
    if (body.size() != 1) return std::nullopt;
    switch (body[0]) {
        case 'I': return TxStatus::Idle;
        case 'T': return TxStatus::InTransaction;
        case 'E': return TxStatus::Failed;
        default: return std::nullopt;
    }
}

std::optional<ErrorFields> decode_error_fields(std::span<const uint8_t> body) noexcept {
    ErrorFields f;
    std::string_view localized_severity;
    size_t pos = 0;
    const char* base = reinterpret_cast<const char*>(body.data());
    while (pos < body.size()) {
        const char code = base[pos++];
        if (code == 0) {
            if (pos != body.size()) return std::nullopt;
            if (f.severity.empty()) f.severity = localized_severity;
            return f;
        }
        const void* nul = std::memchr(base + pos, 0, body.size() - pos);
        if (!nul) return std::nullopt;
        const size_t end = static_cast<const char*>(nul) - base;
        std::string_view value(base + pos, end - pos);
        switch (code) {
            case 'S': localized_severity = value; break;
            case 'V': f.severity = value; break;
            case 'C': f.sqlstate = value; break;
            case 'M': f.message = value; break;
            default: break;
        }
        pos = end + 1;
    }
    return std::nullopt;
}

std::optional<ParameterStatus> decode_parameter_status(std::span<const uint8_t> body) noexcept {
    if (body.empty()) return std::nullopt;
    const char* base = reinterpret_cast<const char*>(body.data());
    const void* nul1 = std::memchr(base, 0, body.size());
    if (!nul1) return std::nullopt;
    const size_t n1 = static_cast<const char*>(nul1) - base;
    const void* nul2 = std::memchr(base + n1 + 1, 0, body.size() - n1 - 1);
    if (!nul2) return std::nullopt;
    const size_t n2 = static_cast<const char*>(nul2) - base;
    if (n2 + 1 != body.size()) return std::nullopt;
    return ParameterStatus{std::string_view(base, n1), std::string_view(base + n1 + 1, n2 - n1 - 1)};
}

std::string_view to_string(BackendType t) noexcept {
    switch (t) {
        case BackendType::Authentication: return "Authentication";
        case BackendType::BackendKeyData: return "BackendKeyData";
        case BackendType::BindComplete: return "BindComplete";
        case BackendType::CloseComplete: return "CloseComplete";
        case BackendType::CommandComplete: return "CommandComplete";
        case BackendType::CopyData: return "CopyData";
        case BackendType::CopyDone: return "CopyDone";
        case BackendType::CopyInResponse: return "CopyInResponse";
        case BackendType::CopyOutResponse: return "CopyOutResponse";
        case BackendType::CopyBothResponse: return "CopyBothResponse";
        case BackendType::DataRow: return "DataRow";
        case BackendType::EmptyQueryResponse: return "EmptyQueryResponse";
        case BackendType::ErrorResponse: return "ErrorResponse";
        case BackendType::FunctionCallResponse: return "FunctionCallResponse";
        case BackendType::NegotiateProtocolVersion: return "NegotiateProtocolVersion";
        case BackendType::NoData: return "NoData";
        case BackendType::NoticeResponse: return "NoticeResponse";
        case BackendType::NotificationResponse: return "NotificationResponse";
        case BackendType::ParameterDescription: return "ParameterDescription";
        case BackendType::ParameterStatus: return "ParameterStatus";
        case BackendType::ParseComplete: return "ParseComplete";
        case BackendType::PortalSuspended: return "PortalSuspended";
        case BackendType::ReadyForQuery: return "ReadyForQuery";
        case BackendType::RowDescription: return "RowDescription";
    }
    return "unknown";
}

std::string_view to_string(FrontendType t) noexcept {
    switch (t) {
        case FrontendType::Bind: return "Bind";
        case FrontendType::Close: return "Close";
        case FrontendType::CopyData: return "CopyData";
        case FrontendType::CopyDone: return "CopyDone";
        case FrontendType::CopyFail: return "CopyFail";
        case FrontendType::Describe: return "Describe";
        case FrontendType::Execute: return "Execute";
        case FrontendType::Flush: return "Flush";
        case FrontendType::FunctionCall: return "FunctionCall";
        case FrontendType::Parse: return "Parse";
        case FrontendType::PasswordMessage: return "PasswordMessage";
        case FrontendType::Query: return "Query";
        case FrontendType::Sync: return "Sync";
        case FrontendType::Terminate: return "Terminate";
    }
    return "unknown";
}

}  // namespace pgrelay::protocol
