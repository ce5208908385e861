#!/usr/bin/env node
// Concurrent node-postgres (pg) clients against a PostgreSQL endpoint (e.g.
// pgrelay's transaction-pooling port).
//
// Usage: NODE_PATH=DIR/node_modules node tests/clients/node_clients.js \
//            HOST PORT USER PASSWORD DBNAME [--clients 20] [--iterations 50] [--timeout 120]
// (DIR prepared by tests/clients/setup_node.sh DIR.)
//
// CLIENTS pg.Client instances (each its own connection, its own
// application_name startup parameter) run concurrently. Every iteration uses
// named queries ({name, text, values}: node-postgres sends Parse for a name
// once per connection, then only Bind/Execute of that name), a BEGIN/COMMIT
// transaction (every fifth one rolled back) with an insert and read-back,
// checks of application_name and a stable backend inside the transaction,
// and every seventh iteration an error inside a
// transaction (division by zero, then 25P02 in the aborted transaction, then
// ROLLBACK). Every result is checked.
//
// Exit status: 0 all checks passed, 1 a check or query failed, 2 usage,
// 3 total timeout exceeded.
'use strict';

const PROG = 'node_clients';

function usage(msg) {
  console.error(`${PROG}: ${msg}`);
  console.error(`usage: node ${PROG}.js HOST PORT USER PASSWORD DBNAME ` +
                '[--clients N] [--iterations N] [--timeout SECONDS]');
  process.exit(2);
}

function parseArgs(argv) {
  const opts = { clients: 20, iterations: 50, timeout: 120 };
  const pos = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a.startsWith('--')) {
      let name = a, val;
      const eq = a.indexOf('=');
      if (eq >= 0) { name = a.slice(0, eq); val = a.slice(eq + 1); }
      else { if (i + 1 >= argv.length) usage(`missing value for ${a}`); val = argv[++i]; }
      const key = name.slice(2);
      if (!(key in opts)) usage(`unknown option ${name}`);
      const num = Number(val);
      if (!Number.isFinite(num) || num <= 0) usage(`${name} must be a positive number`);
      opts[key] = key === 'timeout' ? num : Math.floor(num);
    } else {
      pos.push(a);
    }
  }
  if (pos.length !== 5) usage(`expected 5 positional arguments, got ${pos.length}`);
  const port = Number(pos[1]);
  if (!Number.isInteger(port)) usage(`bad port ${pos[1]}`);
  return { host: pos[0], port, user: pos[2], password: pos[3], database: pos[4], ...opts };
}

const args = parseArgs(process.argv.slice(2));

let pg;
try {
  pg = require('pg');
} catch (e) {
  console.error(`${PROG}: FAIL: cannot load the node-postgres module 'pg' (${e.message.split('\n')[0]}); ` +
                'run tests/clients/setup_node.sh DIR and set NODE_PATH=DIR/node_modules');
  process.exit(1);
}

const watchdog = setTimeout(() => {
  console.error(`${PROG}: FAIL: total timeout of ${args.timeout}s exceeded (hung endpoint?)`);
  process.exit(3);
}, args.timeout * 1000);

class CheckError extends Error {}
function check(cond, what) { if (!cond) throw new CheckError(what); }

function describe(e) {
  if (e instanceof CheckError) return e.message;
  let s = `${e.constructor && e.constructor.name || 'Error'}: ${e.message}`;
  if (e.code) s += ` [SQLSTATE/code ${e.code}]`;
  return s;
}

function newClient(appName) {
  const c = new pg.Client({
    host: args.host, port: args.port, user: args.user, password: args.password,
    database: args.database, ssl: false, connectionTimeoutMillis: 10000,
    ...(appName ? { application_name: appName } : {}),
  });
  return c;
}

const rand32 = () => Math.floor(Math.random() * 0x100000000).toString(16).padStart(8, '0');
const table = `pgrelay_clients_node_${process.pid}_${rand32()}`;

const Q = {
  getX: { name: 'get-x', text: 'SELECT $1::int + 1 AS v' },
  appPid: { name: 'app-pid', text: "SELECT current_setting('application_name') AS app, pg_backend_pid() AS pid" },
  ins: { name: 'ins', text: `INSERT INTO ${table} (client, iter, payload) VALUES ($1, $2, $3) RETURNING id` },
  getRow: { name: 'get-row', text: `SELECT client, iter, payload FROM ${table} WHERE id = $1` },
  count: { name: 'count', text: `SELECT count(*)::int AS n FROM ${table} WHERE client = $1` },
  div: { name: 'div', text: 'SELECT 1 / $1::int AS v' },
};
const q = (def, values) => ({ name: def.name, text: def.text, values });

async function one(client, def, values) {
  const r = await client.query(q(def, values));
  check(r.rows.length === 1, `${def.name} returned ${r.rows.length} rows, expected 1`);
  return r.rows[0];
}

let stop = false;  // set by the first client that fails: the others stop early

async function runClient(n, state) {
  const appName = `${table}_c${n}`;
  const c = state.conn;
  let committed = 0;
  for (let it = 0; it < args.iterations && !stop; it++) {
    state.where = `iteration ${it}`;
    const x = n * 100000 + it;

    // Outside a transaction (each its own implicit transaction): named queries.
    let row;
    for (let d = 0; d < 3; d++) {
      row = await one(c, Q.getX, [x + d]);
      check(row.v === x + d + 1, `get-x(${x + d}) returned ${row.v}, expected ${x + d + 1}`);
    }

    // The transaction.
    const rollback = it % 5 === 4;
    const payload = `c${n}-i${it}-${rand32()}`;
    await c.query('BEGIN');
    const first = await one(c, Q.appPid, []);
    check(first.app === appName, `application_name is '${first.app}', expected this client's own ` +
          `'${appName}' (session state leaked between clients?)`);
    state.pids.add(first.pid);
    const { id } = await one(c, Q.ins, [n, it, payload]);
    row = await one(c, Q.getRow, [id]);
    check(row.client === n && row.iter === it && row.payload === payload,
          `read back of row ${id} returned ${JSON.stringify(row)}, expected ${n}/${it}/${payload}`);
    row = await one(c, Q.count, [n]);
    check(row.n === committed + 1, `client sees ${row.n} of its rows inside the transaction, ` +
          `expected ${committed + 1}`);
    const last = await one(c, Q.appPid, []);
    check(last.pid === first.pid, `backend pid changed inside one transaction: ${first.pid} then ${last.pid}`);
    check(last.app === appName, `application_name changed inside the transaction to '${last.app}'`);
    const end = await c.query(rollback ? 'ROLLBACK' : 'COMMIT');
    check(end.command === (rollback ? 'ROLLBACK' : 'COMMIT'), `${rollback ? 'ROLLBACK' : 'COMMIT'} ` +
          `returned command tag ${end.command}`);
    if (!rollback) committed++;
    row = await one(c, Q.count, [n]);
    check(row.n === committed, `after ${rollback ? 'ROLLBACK' : 'COMMIT'} client sees ${row.n} of its rows, ` +
          `expected ${committed}`);

    // An error inside a transaction, every seventh iteration.
    if (it % 7 === 3) {
      await c.query('BEGIN');
      let err = null;
      try { await c.query(q(Q.div, [0])); } catch (e) { err = e; }
      check(err && err.code === '22012', `1 / 0 did not fail with 22012: ${err ? describe(err) : 'no error'}`);
      err = null;
      try { await c.query(q(Q.getX, [1])); } catch (e) { err = e; }
      check(err && err.code === '25P02', `query in aborted transaction did not fail with 25P02: ` +
            `${err ? describe(err) : 'no error'}`);
      await c.query('ROLLBACK');
      row = await one(c, Q.div, [2]);
      check(row.v === 0, `1 / 2 returned ${row.v} after the failed transaction`);
    }
    state.done = it + 1;
    state.committed = committed;
  }
}

async function main() {
  const start = Date.now();
  const admin = newClient(null);
  admin.on('error', () => {});
  try {
    await admin.connect();
    await admin.query(`CREATE TABLE ${table} (id bigserial PRIMARY KEY, client int NOT NULL, ` +
                      'iter int NOT NULL, payload text NOT NULL)');
  } catch (e) {
    console.error(`${PROG}: FAIL: setup (connect ${args.host}:${args.port} as ${args.user}, ` +
                  `CREATE TABLE ${table}): ${describe(e)}`);
    return 1;
  }

  const states = [];
  for (let n = 0; n < args.clients; n++) {
    const st = { n, app: `${table}_c${n}`, where: 'connect', error: null, done: 0, committed: 0,
                 pids: new Set(), conn: newClient(`${table}_c${n}`) };
    st.conn.on('error', (e) => {
      if (!st.error) st.error = `${st.where}: connection error: ${describe(e)}`;
      stop = true;
    });
    states.push(st);
  }
  // Connect all first, so that the clients really run concurrently.
  const connected = await Promise.allSettled(states.map((s) => s.conn.connect()));
  connected.forEach((r, i) => {
    if (r.status === 'rejected') states[i].error = `connect: ${describe(r.reason)}`;
  });
  if (states.every((s) => !s.error)) {
    await Promise.all(states.map((s) => runClient(s.n, s).catch((e) => {
      if (!s.error) s.error = `${s.where}: ${describe(e)}`;
      stop = true;
    })));
  }
  await Promise.allSettled(states.map((s) => s.conn.end()));

  const errors = states.filter((s) => s.error).map((s) => `client ${s.n} (${s.app}) ${s.error}`);
  const failed = errors.length;
  if (failed === 0 && states.some((s) => s.done !== args.iterations)) errors.push('some clients stopped early');
  try {
    const expected = states.reduce((a, s) => a + s.committed, 0);
    const r = await admin.query(`SELECT count(*)::int AS n FROM ${table}`);
    if (errors.length === 0 && r.rows[0].n !== expected) {
      errors.push(`table holds ${r.rows[0].n} rows after the run, expected ${expected}`);
    }
    await admin.query(`DROP TABLE ${table}`);
    await admin.end();
  } catch (e) {
    errors.push(`cleanup (DROP TABLE ${table}): ${describe(e)}`);
  }
  for (const e of errors) console.error(`${PROG}: FAIL: ${e}`);
  if (errors.length) {
    console.error(`${PROG}: FAIL: ${failed} of ${args.clients} clients failed`);
    return 1;
  }
  const pids = new Set();
  states.forEach((s) => s.pids.forEach((p) => pids.add(p)));
  console.log(`${PROG}: OK: ${args.clients} clients x ${args.iterations} iterations in ` +
              `${((Date.now() - start) / 1000).toFixed(1)}s, ${pids.size} distinct backend pids seen ` +
              `(pg ${require('pg/package.json').version}, node ${process.version})`);
  return 0;
}

main().then((rc) => { clearTimeout(watchdog); process.exit(rc); },
            (e) => { console.error(`${PROG}: FAIL: ${describe(e)}`); process.exit(1); });
