"use strict";
// What every faber ORM runner shares: the requests on stdin (each naming its database's connection,
// which project code never sees in the environment) and the JSON-lines protocol on a pipe of its own,
// setup errors, the approved plan, and loading modules from the project's own node_modules. See
// faber_core/support/node/__init__.py.

const { AsyncLocalStorage } = require("async_hooks");
const fs = require("fs");
const path = require("path");
const readline = require("readline");

// Migrations run in this process and may print anything, on stdout too: faber keeps that as
// output. Only lines on the protocol pipe carrying the nonce count, and the nonce, the first line
// faber writes on stdin, lives only in this module, out of reach of project code.
// The functions emit() uses are taken now, before project code could replace them to see the nonce.
const protocolFd = Number(process.env.FABER_RUNNER_PROTOCOL_FD);
const writeSync = fs.writeSync;
const stringify = JSON.stringify;
let nonce = null;

const SETUP_ERROR_EXIT = 2;
const MIGRATION_FAILED_EXIT = 1;

// The engine of the request being answered (requests are answered one at a time), from its
// connection: `postgres`, or `mysql` for MySQL and MariaDB alike (the ORMs reach either server
// through the project's own MySQL driver).
let requestEngine = "postgres";

function engine() {
  return requestEngine;
}

const ENGINE_LABEL = { postgres: "PostgreSQL", mysql: "MySQL/MariaDB" };

// The project's own setting (`what`: "this config's dialect") names `kind`, which is not one of the
// request's engine's `accepted` kinds ({postgres: [...], mysql: [...]}): refused, saying the engine
// the project's migrations are written for (null for a kind faber deploys to neither), so that faber
// can say which database to give the environment.
function wrongEngine(accepted, what, kind) {
  const written = Object.keys(accepted).find((name) => accepted[name].includes(kind));
  const message = `The environment's database is ${ENGINE_LABEL[engine()]}; ${what} is ${kind}`;
  return new SetupError("wrong_engine", message, { project_engine: written ? ENGINE_LABEL[written] : null });
}

// A request's connection.tls as Node's TLS options, for the drivers' `ssl` option: undefined where
// the URL asks nothing of TLS (the ORM's own `ssl` applies), false for "disable", else the checks
// faber's own connections make ("require": encrypted, the certificate unchecked; "verify-ca": signed
// by the CA; "verify-full": and for the host named), with the files' contents.
function tlsOptions(tls) {
  if (!tls) return undefined;
  if (tls.mode === "disable") return false;
  const read = (file) => (file ? fs.readFileSync(file) : undefined);
  const options = { rejectUnauthorized: tls.mode !== "require" };
  const files = { ca: read(tls.ca), cert: read(tls.cert), key: read(tls.key), crl: read(tls.crl) };
  for (const [name, value] of Object.entries(files)) if (value !== undefined) options[name] = value;
  if (tls.passphrase) options.passphrase = tls.passphrase;
  if (tls.servername) options.servername = tls.servername;
  if (tls.mode === "verify-ca") options.checkServerIdentity = () => undefined;
  return options;
}

// A driver error's code as faber reports it: PostgreSQL's SQLSTATE, or MySQL's error number
// (mysql2's `errno`; its `sqlState` is HY000 for most errors, lock wait timeouts included).
function errorCode(driverError) {
  if (!driverError) return null;
  if (requestEngine === "mysql") return typeof driverError.errno === "number" ? String(driverError.errno) : null;
  return typeof driverError.code === "string" ? driverError.code : null;
}

// `schema.table` quoted for the engine, as faber names a bookkeeping table.
function qualifiedName(schema, table) {
  const quote =
    requestEngine === "mysql"
      ? (name) => `\`${name.replace(/`/g, "``")}\``
      : (name) => `"${name.replace(/"/g, '""')}"`;
  return `${quote(schema)}.${quote(table)}`;
}

function write(event, fields) {
  const line = Buffer.from(stringify({ event, ...fields, nonce }) + "\n");
  for (let written = 0; written < line.length; ) written += writeSync(protocolFd, line, written);
}

// A deploy's apply on an engine without a lock check in SQL (MySQL) asks the runner to wait, as each
// migration starts, until faber has checked its lock on its own session: a line on stdin lets it
// start; a lost lock has faber stop the runner there instead, before anything of the migration ran.
let confirmEachMigration = false;
let awaitingFaber = null;

// faber, stopped by a signal during an apply, asks the runner to stop (a line `{"stop": true}` on
// stdin) and cancels the running migration's statement on the server: that migration fails as any
// other does (rolled back, what it tried measured) and is reported, and no further migration
// starts: migrationStarted throws Stopped instead, before anything of it (reported with
// `started: false`).
let stopRequested = false;

class Stopped extends Error {
  constructor() {
    super("faber was stopped by a signal before this migration started; nothing of it ran");
  }
}

function isStopLine(line) {
  try {
    const message = JSON.parse(line);
    return message !== null && message.stop === true && message.command === undefined;
  } catch {
    return false;
  }
}

async function migrationStarted(fields) {
  if (stopRequested) throw new Stopped();
  emit("migration_started", fields);
  if (!confirmEachMigration) return;
  // Set in this tick, before faber can have read the event and answered.
  const answer = await new Promise((resolve) => {
    awaitingFaber = resolve;
  });
  if (answer === null) throw new Error("faber stopped listening before the migration could start");
}

// An apply reports a migration's queries only if it fails (what of it ran before the failure):
// the running migration's "query" events wait here, go out just before its "migration_failed",
// and are dropped when it finishes. A rehearsal reports every query (they are the preview's SQL).
let queriesOfFailureOnly = false;
let heldQueries = [];

function emit(event, fields = {}) {
  if (event === "query" && queriesOfFailureOnly) {
    heldQueries.push(fields);
    return;
  }
  if (event === "migration_failed") for (const query of heldQueries) write("query", query);
  if (event === "migration_started" || event === "migration_finished" || event === "migration_failed") {
    heldQueries = [];
  }
  write(event, fields);
}

class SetupError extends Error {
  constructor(kind, message, fields = {}) {
    super(message);
    this.kind = kind;
    this.fields = fields;
  }
}

// A step that runs project code or waits on the ORM before any migration runs (loading a project
// file, starting the ORM's connection): faber hears it start and end, and stops this runner, naming
// the step and its file, when it does not end within the environment's runner_load_timeout_seconds.
// A Promise that never settles, or code that never yields, would otherwise hang the run. Steps do
// not nest: each one's end ends faber's watch.
async function bounded(what, file, work) {
  emit("loading", { what, file });
  try {
    return await work();
  } finally {
    emit("loaded");
  }
}

// faber shows and approves a list of migrations (the apply request's "expected"); exactly that
// list runs, or nothing does.
function requireExpectedPlan(expected, pendingNames) {
  if (expected === undefined) return;
  if (JSON.stringify(expected) !== JSON.stringify(pendingNames)) {
    throw new SetupError(
      "plan_mismatch",
      `faber expected to apply [${expected.join(", ")}] but the ORM would apply [${pendingNames.join(", ")}]`,
    );
  }
}

function parseOptions(argv) {
  const options = {};
  for (let i = 0; i < argv.length; i += 2) options[argv[i].replace(/^--/, "")] = argv[i + 1];
  return options;
}

function projectRequire(projectDir, moduleName) {
  let resolved;
  try {
    resolved = require.resolve(moduleName, { paths: [projectDir] });
  } catch (error) {
    if (error && error.code !== "MODULE_NOT_FOUND") {
      // Installed, but Node refuses it (a folder whose path holds a backslash: ERR_INVALID_MODULE_SPECIFIER).
      throw new SetupError("module_unloadable", `${error.code}: ${error.message}`, { module: moduleName });
    }
    throw new SetupError("module_missing", `Cannot find module '${moduleName}' from ${projectDir}`, {
      module: moduleName,
    });
  }
  return require(resolved);
}

function registerTypeScript(projectDir, relative) {
  if (!/\.[cm]?ts$/.test(relative) || process[Symbol.for("ts-node.register.instance")]) return;
  let tsNode;
  try {
    tsNode = require(require.resolve("ts-node", { paths: [projectDir] }));
  } catch {
    throw new SetupError("typescript_loader_missing", `${relative} needs ts-node`, { file: relative });
  }
  tsNode.register({ transpileOnly: true });
}

// What a file the ORM would load is when it is not a regular file; null when it is one, or when
// stat cannot say (a link to nothing: the ORM's own error names it).
function irregularKind(file) {
  let info;
  try {
    info = fs.statSync(file);
  } catch {
    return null;
  }
  if (info.isFile()) return null;
  if (info.isDirectory()) return "a directory";
  if (info.isFIFO()) return "a FIFO";
  if (info.isCharacterDevice()) return "a character device";
  if (info.isBlockDevice()) return "a block device";
  if (info.isSocket()) return "a socket";
  return "not a file";
}

// Refuses `file` (`what`: "Migration file") unless it is a regular file, before the ORM requires it:
// reading a FIFO waits forever for a writer, a device such as /dev/zero never ends (Node's memory
// grows until faber's runner_load_timeout_seconds), and a directory is no module. stat opens nothing.
function requireRegularFile(projectDir, file, what) {
  const kind = irregularKind(file);
  if (kind === null) return;
  const relative = path.relative(projectDir, file);
  let linked = "";
  try {
    if (fs.lstatSync(file).isSymbolicLink()) linked = `a link to ${fs.realpathSync(file)}, `;
  } catch {
    // what it is was said above; where it links is only a detail
  }
  throw new SetupError("not_regular_file", `${what} ${relative} is not a regular file (${linked}${kind}): refused`, {
    file: relative,
  });
}

// What a thrown value says, whatever was thrown: one that cannot be made a string (an object without
// a prototype, a message getter or toString that throws) must not turn a failed migration into a
// broken setup.
function describe(thrown) {
  try {
    return String((thrown && thrown.message) || thrown);
  } catch {
    try {
      return require("util").inspect(thrown);
    } catch {
      return "a thrown value that cannot be shown";
    }
  }
}

// Why a migration module could not be loaded, for faber's report: the loader's message on one line,
// without the require stack Node's "Cannot find module" ends with (every absolute path that led to
// it; ts-node's "Unable to compile TypeScript" has its diagnostics on the lines after the first), and
// the line of `file` the error points at, when its stack names one (a syntax error, a top-level throw).
function loadFailure(error, file) {
  const lines = describe(error).split("\n");
  const stackStart = lines.findIndex((line) => line.startsWith("Require stack:"));
  const message = (stackStart === -1 ? lines : lines.slice(0, stackStart))
    .map((line) => line.trim())
    .filter(Boolean)
    .join(" ");
  let stack = "";
  try {
    stack = String((error && error.stack) || "");
  } catch {
    // a stack that cannot be read only loses the line number
  }
  const escaped = file.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const at = new RegExp(`${escaped}:(\\d+)`).exec(stack);
  return at ? `${message} (line ${at[1]})` : message;
}

// A migration module calling process.exit() as it loads would end this runner mid-request, which
// faber could only report as a runner that died, after nothing named the file. While a migration
// module loads, process.exit throws instead: the load fails like a top-level throw, naming the file
// and the line (migration_load_failed), before faber's lock, approval and backup. An exit called
// later (in up(), or from a timer the module set) still ends the runner. TypeORM loads its migration
// files at once: the loads overlap, so the real process.exit is put back when the last of them ends
// (each putting back what it found replaced, one could end with process.exit refused for good, and a
// migration's own process.exit() in up() read as a load failure).
const processExit = process.exit;
let loadsUnderway = 0;

function refusedExit(code) {
  throw new Error(`it calls process.exit(${code === undefined ? "" : code}) as it loads`);
}

async function exitRefused(work) {
  loadsUnderway += 1;
  process.exit = refusedExit;
  try {
    return await work();
  } finally {
    loadsUnderway -= 1;
    if (loadsUnderway === 0) process.exit = processExit;
  }
}

function emitSetupError(error) {
  if (error instanceof SetupError) {
    emit("setup_error", { kind: error.kind, message: error.message, ...error.fields });
  } else {
    emit("setup_error", { kind: "invalid", message: describe(error) });
    console.error(error && error.stack);
  }
}

// A runner serves one faber run, so that Node and the ORM load once however many times faber
// asks: load(options) loads the project and returns the runner's commands. It starts as soon as
// the nonce is in, before the first request, so that the project loads while faber prepares the
// run; a load that failed fails every request the same way. After the nonce, each line faber
// writes on stdin is a request ({"command": "status", "connection": {...}},
// {"command": "apply", "connection": {...}, "expected": [...]}) answered by the command's events
// and {"event": "done", "exit_code": N}.
// A setup problem, or an error the ORM raised outside any migration, is one setup_error event
// and exit code 2. The runner ends when faber closes stdin.
function serve(load) {
  const options = parseOptions(process.argv.slice(2));
  let loaded = null;
  let answered = Promise.resolve();
  async function answer(line) {
    let code;
    try {
      const request = JSON.parse(line);
      requestEngine = request.connection && request.connection.engine === "mysql" ? "mysql" : "postgres";
      queriesOfFailureOnly = request.queries === "of_failure";
      confirmEachMigration = request.confirm_each_migration === true;
      stopRequested = false;
      writesStatements = request.measure_writes || null;
      copyOf = typeof request.copy_of === "string" ? request.copy_of : null;
      heldQueries = [];
      const commands = await loaded;
      const command = commands[request.command];
      if (!command) throw new SetupError("unsupported", `Unknown runner command: ${request.command}`);
      code = await command(request);
    } catch (error) {
      emitSetupError(error);
      code = SETUP_ERROR_EXIT;
    }
    emit("done", { exit_code: code });
  }
  const requests = readline.createInterface({ input: process.stdin });
  requests.on("line", (line) => {
    if (nonce !== null && isStopLine(line)) {
      stopRequested = true;
      if (awaitingFaber !== null) awaitingFaber(null);
      awaitingFaber = null;
    } else if (awaitingFaber !== null) {
      const resolve = awaitingFaber;
      awaitingFaber = null;
      resolve(line);
    } else if (nonce === null) {
      nonce = line;
      loaded = load(options);
      loaded.catch(() => {}); // reported by each request that awaits it
    } else answered = answered.then(() => answer(line));
  });
  requests.on("close", () => {
    if (awaitingFaber !== null) awaitingFaber(null);
    answered.then(() => process.exit(0));
  });
}

// faber's lock check (an apply request's "lock_check", on PostgreSQL): SQL that fails unless faber's
// session still holds its lock. Run by `query` as a migration starts, before anything of it: in the
// migration's own transaction when it has one, so that a lost lock rolls it back with nothing of it
// run and no further migration starts while another deploy may. A failure of the check is a
// LockCheckFailed, whose fields are those of the migration's "migration_failed": checked in the
// migration's transaction (inTransaction), that transaction rolled back; checked just before a
// migration that has none, the migration never started and no transaction of its rolled back.
class LockCheckFailed extends Error {
  constructor(error, inTransaction) {
    super(describe(error));
    this.fields = {
      code: errorCode((error && (error.driverError || error.original || error.parent)) || error),
      message: this.message,
      at_lock_check: true,
      transaction_rolled_back: inTransaction,
      started: inTransaction,
      duration_seconds: 0,
    };
  }
}

//
// `followedBy`: statements of the same transaction that go in the same message after the check (a
// measure's `start`): one round trip where there would be two. `query` sends its text without
// parameters, which PostgreSQL runs statement by statement until one fails (its simple query
// protocol, which node-postgres uses for a query without values): after a failed check none of
// them runs.
async function checkLock(statement, query, { inTransaction, followedBy = [] }) {
  if (!statement) {
    if (followedBy.length > 0) await query(followedBy.join(";\n"));
    return;
  }
  try {
    await query([statement, ...followedBy].join(";\n"));
  } catch (error) {
    throw new LockCheckFailed(error, inTransaction);
  }
}

// An apply request's "measure_writes" (a deploy on PostgreSQL 15 and later): faber's SQL measuring the
// rows a transactional migration writes, as faber's own appliers measure theirs, so that a restore
// can tell the migrations' rows from the application's. `start` runs in the migration's transaction
// before any of its statements; `before_commit` after its last one, before the ORM records and
// commits it; `after_failure` once it failed, before the ORM rolls it back. The last statement of
// the latter two returns one row whose `table_writes` is an object: rows per table. The measure goes
// with the migration's "migration_finished" or "migration_failed" as `table_writes`; null when it
// could not be measured (no transaction, one the migration ended itself, a statement that failed),
// which faber takes for "unknown", the safe side. `after_unmeasured` runs after a migration that
// finished unmeasured: the server's per-transaction counts still hold a session's earlier
// transactions until it reports them, which these statements ask for, so that the next migration's
// measure holds its own rows only.
let writesStatements = null;

// The measure of one migration's writes, through `query` (a statement -> a Promise of its rows, on
// the migration's own connection and unseen by the ORM's logging); null when the request asks for none.
function writesMeasurement(query) {
  if (writesStatements === null) return null;
  const statements = writesStatements;
  const run = async (list) => {
    let rows = [];
    for (const statement of list) rows = await query(statement);
    return rows;
  };
  return {
    // The statements that start the measure: the caller sends them with faber's lock check
    // (checkLock's followedBy), in the migration's transaction before any of its statements.
    start: statements.start,
    // At `moment` ("commit", "failure" or "unmeasured"), the rows per table, or null: measuring
    // never fails the migration (a statement failing here fails the ORM's own next one anyway, or
    // the rollback follows).
    async measure(moment) {
      const list = { commit: statements.before_commit, failure: statements.after_failure }[moment];
      try {
        const [row] = await run(list || statements.after_unmeasured);
        return list && row && typeof row.table_writes === "object" ? row.table_writes : null;
      } catch {
        return null;
      }
    },
  };
}

// What a migration that never started wrote, where the request measures writes: nothing.
function nothingWritten() {
  return writesStatements === null ? null : {};
}

// Every query a migration issues is attributed to it through the async context it started in, so
// a query the migration did not await is still its own, not the bookkeeping's that happens to run
// next. Queries still running when up() returns (not awaited) are waited for before the migration
// counts as done, and the first of them to fail fails the migration, as sequelize-cli or TypeORM
// would crash on the unhandled rejection.
const migrationScope = new AsyncLocalStorage();

function currentMigration() {
  return migrationScope.getStore() || null;
}

async function runMigration(name, up) {
  const scope = { name, inflight: new Set() };
  await migrationScope.run(scope, up);
  while (scope.inflight.size > 0) {
    const outcomes = await Promise.allSettled([...scope.inflight]);
    const failed = outcomes.find((outcome) => outcome.status === "rejected");
    if (failed) throw failed.reason;
  }
}

// Wraps a query function so that a migration knows the queries it started.
// Statements that change something outside the database they run in: the server's roles,
// databases, tablespaces and settings, and a database's own settings, comment, owner and grants,
// which name it. A rehearsal's copy is on the target's server: there they would change the real
// ones. Each statement of a query is looked at from its start (comments skipped); a ';' inside a
// string may start a false one, which only leaves a migration unrehearsed.
const OUTSIDE_ITS_DATABASE = new RegExp(
  "^(?:" +
    [
      "ALTER\\s+(?:DATABASE|ROLE|USER(?!\\s+MAPPING)|GROUP|SYSTEM|TABLESPACE|SUBSCRIPTION)\\b",
      "SET\\s+(?:GLOBAL|PERSIST)\\b",
      // A DO block runs statements PostgreSQL's parser leaves as text: seen by their words.
      "DO\\b[\\s\\S]*\\b(?:(?:CREATE|ALTER|DROP)\\s+(?:ROLE|USER(?!\\s+MAPPING)|GROUP|DATABASE|TABLESPACE)|ALTER\\s+SYSTEM)\\b",
      "(?:CREATE|DROP)\\s+(?:ROLE|USER(?!\\s+MAPPING)|GROUP|DATABASE|TABLESPACE|SUBSCRIPTION)\\b",
      "(?:REASSIGN|DROP)\\s+OWNED\\b",
      "RENAME\\s+USER\\b",
      "SET\\s+PASSWORD\\b",
      "COMMENT\\s+ON\\s+(?:DATABASE|ROLE|TABLESPACE)\\b",
      "SECURITY\\s+LABEL\\b[^;]*\\bON\\s+(?:DATABASE|ROLE|TABLESPACE)\\b",
      "(?:GRANT|REVOKE)\\b[^;]*\\bON\\s+(?:DATABASE|TABLESPACE|PARAMETER|\\*\\.\\*)",
      "(?:GRANT|REVOKE)\\s+(?![^;]*\\bON\\b)",
    ].join("|") +
    ")",
  "i",
);
const LEADING_COMMENTS = /^(?:\s+|--[^\n]*(?:\n|$)|\/\*[\s\S]*?\*\/)*/;

// On MySQL a statement reaches another database of the server by its name (`app`.t): on a copy,
// the original's. (On PostgreSQL a.b is a schema's table.)
function namesTheOriginal(statement) {
  if (!copyOf || engine() !== "mysql") return false;
  const name = copyOf.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  return new RegExp(`(?<![\\w$\`])(?:\`${name}\`|${name})\\s*\\.`, "i").test(statement);
}

function outsideItsDatabase(sql) {
  if (typeof sql !== "string") return null;
  for (const piece of sql.split(";")) {
    const statement = piece.replace(LEADING_COMMENTS, "");
    if (OUTSIDE_ITS_DATABASE.test(statement) || namesTheOriginal(statement)) return statement.split("\n")[0].trim();
  }
  return null;
}

// The database a rehearsal runs on a copy of, on the same server; null outside a rehearsal.
let copyOf = null;

class OutsideItsDatabase extends Error {}

function trackQueries(query) {
  return function trackedQuery(...args) {
    if (copyOf !== null) {
      const first = args[0];
      const outside = outsideItsDatabase(typeof first === "string" ? first : first && first.query);
      if (outside !== null) {
        const migration = currentMigration();
        if (migration) emit("not_rehearsed", { name: migration.name, statement: outside });
        return Promise.reject(
          new OutsideItsDatabase(`faber did not run this on the rehearsal copy: it changes something outside its database: ${outside}`),
        );
      }
    }
    const promise = query.apply(this, args);
    const scope = migrationScope.getStore();
    if (scope && promise && typeof promise.then === "function") {
      scope.inflight.add(promise);
      const forget = () => scope.inflight.delete(promise);
      promise.then(forget, forget);
    }
    return promise;
  };
}

module.exports = {
  engine,
  tlsOptions,
  errorCode,
  qualifiedName,
  describe,
  loadFailure,
  exitRefused,
  MIGRATION_FAILED_EXIT,
  emit,
  migrationStarted,
  SetupError,
  wrongEngine,
  bounded,
  requireExpectedPlan,
  projectRequire,
  registerTypeScript,
  requireRegularFile,
  serve,
  currentMigration,
  runMigration,
  trackQueries,
  LockCheckFailed,
  checkLock,
  Stopped,
  writesMeasurement,
  nothingWritten,
};
