// Concurrent pgJDBC clients against a PostgreSQL endpoint (e.g. pgrelay's
// transaction-pooling port).
//
// Run (Java 11+ single-file source launch, no build step):
//   java -cp /usr/share/java/postgresql.jar tests/clients/JdbcClients.java \
//       HOST PORT USER PASSWORD DBNAME [--clients 20] [--iterations 50] [--timeout 120]
//   ... HOST PORT USER PASSWORD DBNAME --steady SECONDS [--expect-move]
//
// --steady: one connection for SECONDS, across whatever happens meanwhile (a
// switchover), with two PreparedStatements (server-side from their first use)
// run every 0.2 s and their results checked. Errors a failover may cause
// (08007, 40001, 57P03) are counted; a lost connection, a wrong result, or
// (with --expect-move) never reaching a second server fails.
//
// The URL carries prepareThreshold=1, so every PreparedStatement becomes a
// named server-side statement (Parse S_n once, then only Bind/Execute of S_n)
// from its first execution. Each client keeps a few PreparedStatements for its
// whole life and reuses them across all its transactions, inserts with
// addBatch/executeBatch (several Parse/Bind/Execute before one Sync), mixes
// autocommit with explicit transactions (commit and rollback), and checks every
// result: values, update counts, row counts, its own application_name (sent as
// a startup parameter) in every transaction, and a stable backend inside a
// transaction. Every seventh iteration adds a transaction that fails (22012,
// then 25P02 while aborted) and is rolled back.
//
// Exit status: 0 all checks passed, 1 a check or query failed, 2 usage,
// 3 total timeout exceeded.
// Needs Debian packages libpostgresql-jdbc-java and default-jdk-headless.

import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Properties;
import java.util.Random;
import java.util.Set;
import java.util.concurrent.BrokenBarrierException;
import java.util.concurrent.CyclicBarrier;
import java.util.concurrent.TimeUnit;
import java.util.concurrent.TimeoutException;

public class JdbcClients {
    static final String PROG = "JdbcClients";
    static String host, user, password, dbname;
    static int port, clients = 20, iterations = 50;
    static double timeoutS = 120;
    static double steadyS = 0;
    static boolean expectMove = false;
    static String table;
    static volatile boolean stop = false;  // set by the first client that fails: the others stop early

    static void usage(String msg) {
        System.err.println(PROG + ": " + msg);
        System.err.println("usage: java -cp /usr/share/java/postgresql.jar JdbcClients.java "
                + "HOST PORT USER PASSWORD DBNAME [--clients N] [--iterations N] [--timeout SECONDS]");
        System.exit(2);
    }

    static void parseArgs(String[] argv) {
        List<String> pos = new ArrayList<>();
        try {
            for (int i = 0; i < argv.length; i++) {
                String a = argv[i];
                if (a.equals("--expect-move")) {
                    expectMove = true;
                    continue;
                }
                if (a.startsWith("--")) {
                    String name = a, val;
                    int eq = a.indexOf('=');
                    if (eq >= 0) {
                        name = a.substring(0, eq);
                        val = a.substring(eq + 1);
                    } else {
                        if (i + 1 >= argv.length) usage("missing value for " + a);
                        val = argv[++i];
                    }
                    switch (name) {
                        case "--clients": clients = Integer.parseInt(val); break;
                        case "--iterations": iterations = Integer.parseInt(val); break;
                        case "--timeout": timeoutS = Double.parseDouble(val); break;
                        case "--steady": steadyS = Double.parseDouble(val); break;
                        default: usage("unknown option " + name);
                    }
                } else {
                    pos.add(a);
                }
            }
            if (pos.size() != 5) usage("expected 5 positional arguments, got " + pos.size());
            host = pos.get(0);
            port = Integer.parseInt(pos.get(1));
            user = pos.get(2);
            password = pos.get(3);
            dbname = pos.get(4);
        } catch (NumberFormatException e) {
            usage("not a number: " + e.getMessage());
        }
        if (clients < 1 || iterations < 1 || timeoutS <= 0) usage("--clients, --iterations and --timeout must be positive");
    }

    static Connection connect(String appName) throws SQLException {
        String url = "jdbc:postgresql://" + host + ":" + port + "/" + dbname
                + "?prepareThreshold=1&sslmode=disable&connectTimeout=10"
                + "&socketTimeout=" + (int) Math.ceil(timeoutS);
        Properties p = new Properties();
        p.setProperty("user", user);
        p.setProperty("password", password);
        if (appName != null) p.setProperty("ApplicationName", appName);
        return DriverManager.getConnection(url, p);
    }

    static String describe(Throwable e) {
        StringBuilder sb = new StringBuilder(e.getClass().getSimpleName() + ": " + e.getMessage());
        if (e instanceof SQLException) {
            SQLException s = (SQLException) e;
            if (s.getSQLState() != null) sb.append(" [SQLSTATE ").append(s.getSQLState()).append("]");
            SQLException next = s.getNextException();
            if (next != null && next != s) sb.append("; next: ").append(next.getMessage());
        }
        Throwable cause = e.getCause();
        if (cause != null && cause != e && !(e instanceof BatchUpdateException))
            sb.append("; cause: ").append(cause);
        return sb.toString();
    }

    static class CheckError extends Exception {
        CheckError(String m) { super(m); }
    }

    static void check(boolean cond, String what) throws CheckError {
        if (!cond) throw new CheckError(what);
    }

    static class Client extends Thread {
        final int n;
        final String appName;
        final CyclicBarrier barrier;
        volatile String error;
        volatile int done = 0;
        volatile long committedRows = 0;
        final Set<Integer> pids = new HashSet<>();
        final Random rnd;

        Client(int n, CyclicBarrier barrier) {
            super("client-" + n);
            setDaemon(true);
            this.n = n;
            this.appName = table + "_c" + n;
            this.barrier = barrier;
            this.rnd = new Random(n * 7919L + System.nanoTime());
        }

        @Override
        public void run() {
            String where = "connect";
            Connection conn = null;
            try {
                try {
                    conn = connect(appName);
                } catch (SQLException e) {
                    barrier.reset();  // wake the others: BrokenBarrierException
                    throw e;
                }
                where = "waiting for the other clients";
                try {
                    barrier.await((long) (timeoutS * 1000), TimeUnit.MILLISECONDS);
                } catch (BrokenBarrierException | TimeoutException e) {
                    throw new CheckError("another client failed to connect");
                }
                where = "prepare";
                try (PreparedStatement psAdd = conn.prepareStatement(
                             "SELECT ?::int + 1, current_setting('application_name'), pg_backend_pid()");
                     PreparedStatement psIns = conn.prepareStatement(
                             "INSERT INTO " + table + " (client, iter, seq, payload) VALUES (?, ?, ?, ?)");
                     PreparedStatement psIter = conn.prepareStatement(
                             "SELECT count(*), coalesce(sum(seq), 0), "
                             + "coalesce(string_agg(payload, ',' ORDER BY seq), '') "
                             + "FROM " + table + " WHERE client = ? AND iter = ?");
                     PreparedStatement psTotal = conn.prepareStatement(
                             "SELECT count(*) FROM " + table + " WHERE client = ?");
                     PreparedStatement psDiv = conn.prepareStatement("SELECT 1 / ?::int");
                     Statement st = conn.createStatement()) {
                    check(psAdd.unwrap(org.postgresql.PGStatement.class).isUseServerPrepare(),
                            "prepareThreshold=1 did not make the PreparedStatement server-prepared");
                    for (int it = 0; it < iterations && !stop; it++) {
                        where = "iteration " + it;
                        iteration(conn, it, psAdd, psIns, psIter, psTotal, st);
                        if (it % 7 == 3) failedTransaction(conn, psDiv, psAdd);
                        done = it + 1;
                    }
                }
            } catch (Exception e) {
                error = "client " + n + " (" + appName + ") " + where + ": " + describe(e);
                stop = true;
            } finally {
                if (conn != null) {
                    try { conn.close(); } catch (SQLException ignored) { }
                }
            }
        }

        int addOne(PreparedStatement psAdd, int x) throws SQLException, CheckError {
            psAdd.setInt(1, x);
            try (ResultSet rs = psAdd.executeQuery()) {
                check(rs.next(), "SELECT ?::int + 1 returned no row");
                int v = rs.getInt(1);
                String app = rs.getString(2);
                int pid = rs.getInt(3);
                check(v == x + 1, "SELECT ?::int + 1 with " + x + " returned " + v + ", expected " + (x + 1));
                check(appName.equals(app), "application_name is '" + app + "', expected this client's own '"
                        + appName + "' (session state leaked between clients?)");
                check(!rs.next(), "SELECT ?::int + 1 returned more than one row");
                pids.add(pid);
                return pid;
            }
        }

        void iteration(Connection conn, int it, PreparedStatement psAdd, PreparedStatement psIns,
                       PreparedStatement psIter, PreparedStatement psTotal, Statement st)
                throws SQLException, CheckError {
            // mode 0: autocommit; 1, 2: explicit transaction, commit; 3: explicit, rollback
            int mode = it % 4;
            boolean explicit = mode != 0, rollback = mode == 3;
            if (conn.getAutoCommit() == explicit) conn.setAutoCommit(!explicit);

            int pid1 = addOne(psAdd, n * 100000 + it);

            int k = 1 + (it % 5);
            StringBuilder want = new StringBuilder();
            for (int seq = 0; seq < k; seq++) {
                String payload = "c" + n + "-i" + it + "-s" + seq + "-" + Integer.toHexString(rnd.nextInt());
                psIns.setInt(1, n);
                psIns.setInt(2, it);
                psIns.setInt(3, seq);
                psIns.setString(4, payload);
                psIns.addBatch();
                if (seq > 0) want.append(',');
                want.append(payload);
            }
            int[] counts = psIns.executeBatch();
            check(counts.length == k, "executeBatch returned " + counts.length + " update counts, expected " + k);
            for (int i = 0; i < k; i++)
                check(counts[i] == 1, "executeBatch update count [" + i + "] is " + counts[i] + ", expected 1");

            checkIter(psIter, it, k, want.toString(), "after executeBatch");

            try (ResultSet rs = st.executeQuery("SHOW application_name")) {
                check(rs.next() && appName.equals(rs.getString(1)),
                        "SHOW application_name did not return this client's own '" + appName + "'");
            }

            int pid2 = addOne(psAdd, it);
            if (explicit)
                check(pid1 == pid2, "backend pid changed inside one transaction: " + pid1 + " then " + pid2);

            if (explicit) {
                if (rollback) conn.rollback(); else conn.commit();
            }
            if (!rollback) committedRows += k;

            // Outside (autocommit) or in a fresh transaction: the batch is there
            // after commit/autocommit and gone after rollback.
            if (rollback) checkIter(psIter, it, 0, "", "after rollback");
            else checkIter(psIter, it, k, want.toString(), explicit ? "after commit" : "after autocommit batch");
            psTotal.setInt(1, n);
            try (ResultSet rs = psTotal.executeQuery()) {
                rs.next();
                long total = rs.getLong(1);
                check(total == committedRows, "client sees " + total + " of its rows, expected " + committedRows);
            }
            if (explicit) conn.commit();
        }

        // An error inside a transaction: aborted until ROLLBACK, then usable again.
        void failedTransaction(Connection conn, PreparedStatement psDiv, PreparedStatement psAdd)
                throws SQLException, CheckError {
            if (conn.getAutoCommit()) conn.setAutoCommit(false);
            psDiv.setInt(1, 0);
            try (ResultSet rs = psDiv.executeQuery()) {
                throw new CheckError("SELECT 1 / 0 did not fail");
            } catch (SQLException e) {
                check("22012".equals(e.getSQLState()), "SELECT 1 / 0 failed with SQLSTATE "
                        + e.getSQLState() + ", expected 22012: " + e.getMessage());
            }
            try {
                addOne(psAdd, 1);
                throw new CheckError("query in an aborted transaction did not fail");
            } catch (SQLException e) {
                check("25P02".equals(e.getSQLState()), "query in an aborted transaction failed with SQLSTATE "
                        + e.getSQLState() + ", expected 25P02: " + e.getMessage());
            }
            conn.rollback();
            psDiv.setInt(1, 2);
            try (ResultSet rs = psDiv.executeQuery()) {
                check(rs.next() && rs.getInt(1) == 0, "SELECT 1 / 2 did not return 0 after ROLLBACK");
            }
            conn.commit();
        }

        void checkIter(PreparedStatement psIter, int it, int k, String want, String when)
                throws SQLException, CheckError {
            psIter.setInt(1, n);
            psIter.setInt(2, it);
            try (ResultSet rs = psIter.executeQuery()) {
                check(rs.next(), "count query returned no row");
                long cnt = rs.getLong(1), sum = rs.getLong(2);
                String got = rs.getString(3);
                check(cnt == k, when + ": " + cnt + " rows for iteration " + it + ", expected " + k);
                check(sum == (long) k * (k - 1) / 2, when + ": sum(seq) " + sum + ", expected " + ((long) k * (k - 1) / 2));
                check(want.equals(got), when + ": payloads '" + got + "', expected '" + want + "'");
            }
        }
    }

    static int steady() throws Exception {
        long deadline = System.nanoTime() + (long) (steadyS * 1e9);
        int ok = 0, errors = 0;
        List<Integer> ports = new ArrayList<>();
        try (Connection c = connect("steady_jdbc");
             PreparedStatement add = c.prepareStatement("SELECT ?::int + ?::int");
             PreparedStatement where = c.prepareStatement("SELECT inet_server_port()")) {
            for (int i = 0; System.nanoTime() < deadline; i++) {
                Thread.sleep(200);
                try {
                    add.setInt(1, i);
                    add.setInt(2, 1);
                    int sum, port;
                    try (ResultSet r = add.executeQuery()) {
                        r.next();
                        sum = r.getInt(1);
                    }
                    try (ResultSet r = where.executeQuery()) {
                        r.next();
                        port = r.getInt(1);
                    }
                    if (sum != i + 1) {
                        System.err.println(PROG + ": FAIL: " + i + " + 1 = " + sum);
                        return 1;
                    }
                    ok++;
                    if (ports.isEmpty() || ports.get(ports.size() - 1) != port) ports.add(port);
                } catch (SQLException e) {
                    String st = e.getSQLState();
                    if (c.isClosed()) {
                        System.err.println(PROG + ": FAIL: the connection was lost: " + describe(e));
                        return 1;
                    }
                    if ("08007".equals(st) || "40001".equals(st) || "57P03".equals(st)) {
                        errors++;
                        continue;
                    }
                    System.err.println(PROG + ": FAIL: " + describe(e));
                    return 1;
                }
            }
        }
        System.out.println("steady: " + ok + " queries, " + errors + " errors, server ports " + ports);
        if (ok == 0 || (expectMove && ports.size() < 2)) {
            System.err.println(PROG + ": FAIL: " + ok + " queries, server ports " + ports);
            return 1;
        }
        return 0;
    }

    public static void main(String[] argv) throws Exception {
        parseArgs(argv);
        if (steadyS > 0) System.exit(steady());
        long start = System.nanoTime();
        long deadline = start + (long) (timeoutS * 1e9);
        Thread watchdog = new Thread(() -> {
            try {
                Thread.sleep((long) (timeoutS * 1000));
            } catch (InterruptedException e) {
                return;
            }
            System.err.println(PROG + ": FAIL: total timeout of " + timeoutS + "s exceeded (hung endpoint?)");
            System.err.flush();
            Runtime.getRuntime().halt(3);
        });
        watchdog.setDaemon(true);
        watchdog.start();

        table = "pgrelay_clients_jdbc_" + ProcessHandle.current().pid() + "_"
                + Integer.toHexString(new Random().nextInt() & 0x7fffffff);
        Connection admin;
        try {
            admin = connect(null);
            try (Statement st = admin.createStatement()) {
                st.execute("CREATE TABLE " + table + " (id bigserial PRIMARY KEY, client int NOT NULL, "
                        + "iter int NOT NULL, seq int NOT NULL, payload text NOT NULL)");
            }
        } catch (SQLException e) {
            System.err.println(PROG + ": FAIL: setup (connect " + host + ":" + port + " as " + user
                    + ", CREATE TABLE " + table + "): " + describe(e));
            System.exit(1);
            return;
        }

        CyclicBarrier barrier = new CyclicBarrier(clients);
        List<Client> cs = new ArrayList<>();
        for (int i = 0; i < clients; i++) cs.add(new Client(i, barrier));
        for (Client c : cs) c.start();
        for (Client c : cs) {
            long left = (deadline - System.nanoTime()) / 1_000_000;
            if (left > 0) c.join(left);
        }

        List<String> errors = new ArrayList<>();
        List<Integer> hung = new ArrayList<>();
        long expected = 0;
        for (Client c : cs) {
            if (c.error != null) errors.add(c.error);
            if (c.isAlive()) hung.add(c.n);
            expected += c.committedRows;
        }
        int failedClients = errors.size();
        if (!hung.isEmpty()) {  // no cleanup: DROP TABLE would wait for the hung clients' locks
            for (String e : errors) System.err.println(PROG + ": FAIL: " + e);
            System.err.println(PROG + ": FAIL: clients " + hung + " did not finish within " + timeoutS + "s");
            Runtime.getRuntime().halt(3);
        }
        try (Statement st = admin.createStatement()) {
            try (ResultSet rs = st.executeQuery("SELECT count(*) FROM " + table)) {
                rs.next();
                long total = rs.getLong(1);
                if (errors.isEmpty() && total != expected)
                    errors.add("table holds " + total + " rows after the run, expected " + expected);
            }
            st.execute("DROP TABLE " + table);
            admin.close();
        } catch (SQLException e) {
            errors.add("cleanup (DROP TABLE " + table + "): " + describe(e));
        }
        for (String e : errors) System.err.println(PROG + ": FAIL: " + e);
        if (!errors.isEmpty()) {
            System.err.println(PROG + ": FAIL: " + failedClients + " of " + clients + " clients failed");
            System.exit(1);
        }
        Set<Integer> pids = new HashSet<>();
        for (Client c : cs) pids.addAll(c.pids);
        System.out.printf("%s: OK: %d clients x %d iterations in %.1fs, %d distinct backend pids seen%n",
                PROG, clients, iterations, (System.nanoTime() - start) / 1e9, pids.size());
        System.exit(0);
    }
}
