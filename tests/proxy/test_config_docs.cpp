// The documentation of the configuration cannot drift from the parser:
// pgrelay.toml(5), generated from conf/pgrelay.toml by docs/man/mkman.py, must
// document every key the parser accepts (config_keys(), the list only_keys()
// enforces), no key it does not, and say for each whether SIGHUP applies it as
// the schema says.
#include <catch2/catch.hpp>

#include <fstream>
#include <map>
#include <regex>
#include <set>
#include <sstream>
#include <string>

#include "proxy/config.hpp"

namespace {

std::string read_file(const std::string& path) {
    std::ifstream f(path);
    REQUIRE(f.good());
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
}

struct DocEntry {
    bool restart = false;
    bool described = false;  // text between the entry line and its Reload line
};

// "[table]" -> key -> entry, from the roff of pgrelay.toml(5): ".SS [table]",
// then ".TP"/".TQ" + "\fBkey\fR = value", the description, ".IP" + "Reload: ...".
std::map<std::string, std::map<std::string, DocEntry>> parse_man(const std::string& roff) {
    std::map<std::string, std::map<std::string, DocEntry>> out;
    std::istringstream in(roff);
    std::string line, table;
    std::vector<std::string> group;  // keys of the entry being read
    bool text = false;
    const std::regex entry(R"(^\\fB([a-z_]+)\\fR = .*$)");
    std::smatch m;
    while (std::getline(in, line)) {
        if (line.rfind(".SS ", 0) == 0) {
            table = line.substr(4);
            group.clear();
        } else if (line.rfind(".SH ", 0) == 0) {
            table.clear();
            group.clear();
        } else if (!table.empty() && std::regex_match(line, m, entry)) {
            if (text) group.clear();  // a new .TP, not a .TQ continuation
            text = false;
            group.push_back(m[1]);
            out[table][m[1]];
        } else if (line.rfind("Reload: ", 0) == 0 && !group.empty()) {
            for (const auto& k : group) {
                out[table][k].restart = line.find("restart") != std::string::npos;
                out[table][k].described = text;
            }
            group.clear();
            text = false;
        } else if (!group.empty() && line != ".TP" && line != ".TQ" && line != ".IP" && !line.empty()) {
            text = true;
        }
    }
    return out;
}

// The man page's name for a schema table.
std::string doc_table(std::string_view t) {
    if (t == "topology.members") return "[[topology.members]]";
    return "[" + std::string(t) + "]";
}

bool is_table(std::string_view parent, std::string_view key) {
    const std::string full = parent.empty() ? std::string(key) : std::string(parent) + "." + std::string(key);
    if (full == "routing.weights" || full == "topology.member_addresses") return true;  // free-form: member names
    if (full == "pool.rw" || full == "pool.ro") return true;                            // [pool]'s keys
    for (const auto& k : pgrelay::config_keys())
        if (k.table == full) return true;
    return false;
}

}  // namespace

TEST_CASE("every option the parser accepts is documented in pgrelay.toml(5) and nothing else is", "[config][docs]") {
    const auto doc = parse_man(read_file(std::string(PGRELAY_MAN_DIR) + "/pgrelay.toml.5"));
    REQUIRE(doc.size() > 10);

    std::set<std::pair<std::string, std::string>> accepted;
    int leaves = 0;
    for (const auto& k : pgrelay::config_keys()) {
        if (k.table.empty() || is_table(k.table, k.key)) continue;  // tables are sections, not entries
        ++leaves;
        accepted.insert({doc_table(k.table), std::string(k.key)});
        INFO(doc_table(k.table) << " " << k.key);
        const auto t = doc.find(doc_table(k.table));
        REQUIRE(t != doc.end());
        const auto e = t->second.find(std::string(k.key));
        REQUIRE(e != t->second.end());
        CHECK(e->second.described);
        // conf/pgrelay.toml marks restart-only options "Restart to change."
        CHECK(e->second.restart == k.restart);
    }
    CHECK(leaves > 80);  // the schema is not empty (89 keys today)

    // The other way round: no documented option the parser would reject. The
    // [pool.rw]/[pool.ro] examples repeat [pool]'s keys.
    for (const auto& [table, keys] : doc) {
        for (const auto& [key, entry] : keys) {
            INFO(table << " " << key);
            const std::string as = table == "[pool.rw]" || table == "[pool.ro]" ? "[pool]" : table;
            CHECK(accepted.count({as, key}) == 1);
        }
    }
}

TEST_CASE("the schema lists every table the parser reads", "[config][docs]") {
    // Each table named as a key exists as a table in the schema, except the
    // free-form ones and [pool.rw]/[pool.ro], which take [pool]'s keys.
    std::set<std::string> tables;
    for (const auto& k : pgrelay::config_keys()) tables.insert(std::string(k.table));
    for (const auto& k : pgrelay::config_keys()) {
        if (!k.table.empty()) continue;
        INFO(k.key);
        CHECK(tables.count(std::string(k.key)) == 1);
    }
    for (const char* sub : {"topology.members", "topology.zookeeper", "topology.etcd", "topology.patroni_api",
                            "topology.probe", "topology.rest_fallback"}) {
        INFO(sub);
        CHECK(tables.count(sub) == 1);
    }
    // A key the schema does not list is rejected, in a subtable too.
    CHECK_THROWS_WITH(pgrelay::parse_config("[listen]\nrw = \"127.0.0.1:1\"\n[pool.rw]\nrw = 1\n[topology]\n"
                                            "[[topology.members]]\nname=\"a\"\nhost=\"h\"\nport=1\nrole=\"primary\"\n",
                                            "t.toml"),
                      Catch::Contains("unknown key 'rw' in [pool.rw]"));
}
