// The status page the admin listener serves at / (and /status): one
// self-contained HTML document, inline style and script, no other resources.
// Its script fetches /topology and /pools every second and shows the
// cluster as pgrelay sees it, connections and pools per member, this instance
// and its peers, and the recent topology changes with their reroute times.
#pragma once

#include <string_view>

namespace pgrelay {

// The whole document (built once; valid for the life of the process).
std::string_view status_page_html();

// The Content-Security-Policy header sent with it: nothing but its own
// inline script and style (by SHA-256 hash), fetches to this origin, data:
// images; no frames, forms or base URI.
std::string_view status_page_csp();

}  // namespace pgrelay
