// The three npm connectors: mysql, mysql2 (prepared statements with execute) and mariadb
// (pipelined prepare + execute, and batch()).
const [host, port, db, table, user, password] = process.argv.slice(2);
const opts = { host, port: Number(port), user, password: password || '', database: db };
const assert = (c, m) => { if (!c) throw new Error(m); };

async function viaMysql() {
  const mysql = require('mysql');
  const c = mysql.createConnection(opts);
  const q = (sql, args) => new Promise((ok, no) => c.query(sql, args, (e, r) => (e ? no(e) : ok(r))));
  assert((await q('SELECT 1 AS one'))[0].one === 1, 'mysql SELECT 1');
  await q('BEGIN');
  await q(`INSERT INTO ${table}(val) VALUES (?)`, ['committed mysql']);
  await q('COMMIT');
  await q('BEGIN');
  await q(`UPDATE ${table} SET val = ?`, ['rolled back']);
  await q('ROLLBACK');
  const r = await q(`SELECT COUNT(*) AS n FROM ${table} WHERE val = ?`, ['committed mysql']);
  assert(r[0].n === 1, 'mysql count');
  c.end();
}

async function viaMysql2() {
  const mysql = require('mysql2/promise');
  const c = await mysql.createConnection(opts);
  const [one] = await c.execute('SELECT 1 AS one');
  assert(one[0].one === 1, 'mysql2 SELECT 1');
  await c.beginTransaction();
  await c.execute(`INSERT INTO ${table}(val) VALUES (?)`, ['committed mysql2']);
  await c.commit();
  await c.beginTransaction();
  await c.execute(`UPDATE ${table} SET val = ?`, ['rolled back']);
  await c.rollback();
  const [r] = await c.execute(`SELECT COUNT(*) AS n FROM ${table} WHERE val = ?`, ['committed mysql2']);
  assert(Number(r[0].n) === 1, 'mysql2 count');
  await c.end();
}

async function viaMariadb() {
  const mariadb = require('mariadb');
  const c = await mariadb.createConnection(opts);
  const one = await c.execute('SELECT 1 AS one');
  assert(Number(one[0].one) === 1, 'mariadb SELECT 1');
  await c.beginTransaction();
  await c.execute(`INSERT INTO ${table}(val) VALUES (?)`, ['committed mariadb']);
  await c.commit();
  await c.beginTransaction();
  await c.execute(`UPDATE ${table} SET val = ?`, ['rolled back']);
  await c.rollback();
  const r = await c.execute(`SELECT COUNT(*) AS n FROM ${table} WHERE val = ?`, ['committed mariadb']);
  assert(Number(r[0].n) === 1, 'mariadb count');
  // Pipelined PREPARE + EXECUTE (statement id 0xFFFFFFFF: "the one just prepared").
  const [x, y] = await Promise.all([
    c.execute(`SELECT COUNT(*) AS n FROM ${table} WHERE val = ?`, ['committed mariadb']),
    c.execute(`SELECT COUNT(*) AS n FROM ${table} WHERE val = ?`, ['rolled back']),
  ]);
  assert(Number(x[0].n) === 1 && Number(y[0].n) === 0, 'mariadb pipelined executes');
  // batch(): one COM_STMT_BULK_EXECUTE where the server offers bulk (MariaDB does), answered
  // by one OK carrying the total of affected rows; inside a transaction, undone by ROLLBACK.
  const big = (k, v) => (typeof v === 'bigint' ? Number(v) : v);
  const count = async (val) => Number((await c.execute(`SELECT COUNT(*) AS n FROM ${table} WHERE val = ?`, [val]))[0].n);
  await c.beginTransaction();
  const b = await c.batch(`INSERT INTO ${table}(val) VALUES (?)`, [['batch mariadb'], ['batch mariadb'], ['batch mariadb']]);
  assert(!Array.isArray(b) && Number(b.affectedRows) === 3, 'mariadb batch affectedRows: ' + JSON.stringify(b, big));
  assert((await count('batch mariadb')) === 3, 'mariadb batch rows visible in its transaction');
  await c.rollback();
  assert((await count('batch mariadb')) === 0, 'mariadb batch rolled back');
  await c.end();
}

(async () => {
  await viaMysql();
  await viaMysql2();
  await viaMariadb();
  console.log('ok');
})().catch((e) => { console.error(e && e.stack ? e.stack : e); process.exit(1); });
