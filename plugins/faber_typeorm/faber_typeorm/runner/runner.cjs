"use strict";
// faber's TypeORM runner. Loads the project's DataSource with the project's own TypeORM once,
// then for each of faber's requests reports the migration status or applies pending migrations
// through TypeORM's MigrationExecutor, one transaction per migration, on a connection of its own.
// Speaks JSON lines on faber's protocol pipe (see faber_core/support/node); whatever anyone prints
// is output.
//
//   node runner.cjs --data-source data-source.js     (requests on stdin)
//
// Each request's connection replaces the data source's connection options.

const fs = require("fs");
const path = require("path");
const { fileURLToPath, pathToFileURL } = require("url");
const { performance } = require("perf_hooks");

const faber = require(process.env.FABER_RUNNER_COMMON); // faber_core/support/node/runner-common.cjs
const CONNECTION_KEYS = ["url", "host", "port", "username", "password", "database", "replication", "socketPath"];
// What the driver options (`extra`) may not say: where to connect; mysql2 also reads a `uri` for every
// option left unset, and a `stream` is a connection of its own.
const EXTRA_CONNECTION_KEYS = ["connectionString", "host", "hostaddr", "port", "user", "password", "database", "socketPath", "uri", "stream"];
const SUCCESS_LOG = /^Migration (.+) has been (?:\(fake\) )?executed successfully\.$/;
// Statements that end or start a transaction (not savepoints: ROLLBACK TO keeps it open).
const TRANSACTION_CONTROL = /^\s*(COMMIT|END|ABORT|ROLLBACK(?!\s+TO\b)|BEGIN|START\s+TRANSACTION)\b/i;
// The DataSource types faber deploys to each engine's servers; a MySQL or MariaDB project keeps its
// own type (TypeORM's mysql driver serves both, through mysql2 when the project installed it).
const TYPES = { postgres: ["postgres", "aurora-postgres"], mysql: ["mysql", "mariadb"] };

async function loadModule(file) {
  try {
    return require(file);
  } catch (error) {
    if (error && error.code === "ERR_REQUIRE_ESM") return import(pathToFileURL(file).href);
    throw error;
  }
}

function isDataSource(value) {
  return typeof value === "object" && value !== null && value["@instanceof"] === Symbol.for("DataSource");
}

function findDataSource(exported, relative) {
  if (isDataSource(exported)) return exported;
  if (exported && isDataSource(exported.default)) return exported.default;
  const found = [...new Set(Object.values(exported || {}).filter(isDataSource))];
  if (found.length === 1) return found[0];
  const names = Object.keys(exported || {}).join(", ") || "nothing";
  const problem = found.length === 0 ? "exports no DataSource" : `exports ${found.length} DataSources`;
  throw new faber.SetupError(
    "not_found",
    `${relative} ${problem} (exports: ${names}); export one DataSource, as its default export or its only export`,
  );
}

// TypeORM finds the DataSource's migrations (and entities, subscribers) by glob as it connects, and
// loads each through importOrRequireFile: wrapped so that each is stat'ed first and refused unless it
// is a regular file (see faber.requireRegularFile), named as a migration while TypeORM builds the
// migrations; a migration module that fails to load (a syntax error, a missing module, a top-level
// throw or process.exit(): see faber.exitRefused) is reported naming its file
// (migration_load_failed), where TypeORM's own error names none; one that loads is kept in
// loadedMigrationFiles with what it exports.
// TypeORM loads every migration file as it connects, before it runs any (its migration:show too), so
// the status read, before faber's lock and backup, finds it. Both functions are read from their
// modules' exports at each call, so replacing them there is what TypeORM calls. A TypeORM without
// these modules loads its files unchecked.
function checkLoadedFiles(projectDir) {
  const typeormDir = path.dirname(require.resolve("typeorm", { paths: [projectDir] }));
  let importUtils, metadataBuilder;
  try {
    importUtils = require(path.join(typeormDir, "util", "ImportUtils.js"));
    metadataBuilder = require(path.join(typeormDir, "connection", "ConnectionMetadataBuilder.js"));
  } catch {
    return;
  }
  const importOrRequireFile = importUtils.importOrRequireFile;
  const builder = metadataBuilder.ConnectionMetadataBuilder && metadataBuilder.ConnectionMetadataBuilder.prototype;
  if (typeof importOrRequireFile !== "function" || !builder || typeof builder.buildMigrations !== "function") return;
  let buildingMigrations = false;
  importUtils.importOrRequireFile = async function checkedImportOrRequireFile(file, ...rest) {
    const local = String(file).startsWith("file://") ? fileURLToPath(file) : file;
    const migration = buildingMigrations;
    faber.requireRegularFile(projectDir, local, migration ? "Migration file" : "TypeORM's file");
    if (!migration) return importOrRequireFile.call(this, file, ...rest);
    const relative = path.relative(projectDir, local);
    // Kept in the order TypeORM asks for the files (its glob's), not the order their imports finish in.
    const kept = { file: local, exported: undefined };
    loadedMigrationFiles.push(kept);
    let loaded;
    try {
      loaded = await faber.exitRefused(() => importOrRequireFile.call(this, file, ...rest));
    } catch (error) {
      if (error instanceof faber.SetupError) throw error;
      throw new faber.SetupError("migration_load_failed", faber.loadFailure(error, local), { file: relative });
    }
    const notAClass = exportedNonClass(loaded[0]);
    if (notAClass) {
      throw new faber.SetupError(
        "migration_load_failed",
        `it exports ${notAClass.name || "a function"}, which is not a class: TypeORM makes a migration of ` +
          "each function a migration file exports, with new",
        { file: relative },
      );
    }
    kept.exported = loaded[0];
    return loaded;
  };
  const buildMigrations = builder.buildMigrations;
  builder.buildMigrations = async function checkedBuildMigrations(...args) {
    buildingMigrations = true;
    try {
      return await buildMigrations.apply(this, args);
    } finally {
      buildingMigrations = false;
    }
  };
}

// The migration files TypeORM loaded, { file, exported } each: the files its globs matched, which it
// expands and loads itself. An ES module (a project whose package.json says "type": "module", an .mjs
// file) is loaded by import(), which leaves no trace in require.cache, so what TypeORM got back is
// the only record of which file exports which of its classes.
const loadedMigrationFiles = [];

// The first function `exported` holds that is no class, looked for where TypeORM looks for migration
// classes (the export itself, arrays, objects' values). TypeORM calls `new` on each: a method or
// arrow function (a module shaped like sequelize-cli's, `{ up() {} }`) fails it with "migrationClass
// is not a constructor", naming no file. Reflect.construct with another function's body tells
// without calling it.
function exportedNonClass(exported) {
  if (typeof exported === "function") {
    try {
      Reflect.construct(String, [], exported);
      return null;
    } catch {
      return exported;
    }
  }
  if (exported === null || typeof exported !== "object") return null;
  for (const value of Array.isArray(exported) ? exported : Object.values(exported)) {
    const found = exportedNonClass(value);
    if (found) return found;
  }
  return null;
}

async function loadDataSource(projectDir, relative) {
  const file = path.resolve(projectDir, relative);
  if (!fs.existsSync(file)) {
    throw new faber.SetupError("load_failed", `${relative} does not exist in ${projectDir}`, { file: relative });
  }
  faber.projectRequire(projectDir, "typeorm");
  checkLoadedFiles(projectDir);
  faber.registerTypeScript(projectDir, relative);
  let exported;
  try {
    // A data source module may export a Promise of its DataSource: awaited within faber's deadline.
    exported = await faber.bounded("the data source", relative, () => loadModule(file));
  } catch (error) {
    throw new faber.SetupError("load_failed", faber.describe(error), { file: relative });
  }
  return findDataSource(exported, relative);
}

// A new DataSource with the project's options, connected where faber's own connections go (the
// request's connection, never a URL: TypeORM's parser drops a URL's query, keeps the database name
// percent-encoded and splits an IPv6 host at its first ':'), never touching the schema on its own
// (no synchronize, no migrationsRun, no dropSchema); given the run's migration classes once a
// request has resolved them (see load).
function retarget(userDataSource, connection, logger, migrationClasses) {
  const options = { ...userDataSource.options };
  projectTransactionMode = transactionMode(options);
  if (migrationClasses) options.migrations = migrationClasses;
  const engine = faber.engine();
  if (!TYPES[engine].includes(options.type)) throw faber.wrongEngine(TYPES, "this DataSource's type", options.type);
  const ssl = faber.tlsOptions(connection.tls);
  for (const key of CONNECTION_KEYS) delete options[key];
  // The driver takes `extra` over TypeORM's own options: none of it may say where to connect.
  options.extra = { ...options.extra };
  for (const key of EXTRA_CONNECTION_KEYS) delete options.extra[key];
  if (ssl !== undefined) {
    delete options.extra.ssl;
    options.ssl = ssl;
  }
  if (engine === "postgres") {
    // node-postgres takes `options` over PGOPTIONS, which carries faber's timeouts: the project's own
    // options, the URL's and the timeouts, the timeouts last.
    const sessionOptions = [options.extra.options, connection.options, process.env.PGOPTIONS].filter(Boolean);
    if (sessionOptions.length > 0) options.extra.options = sessionOptions.join(" ");
    if (connection.application_name) options.applicationName = connection.application_name;
  }
  Object.assign(options, {
    type: engine === "postgres" ? "postgres" : options.type,
    host: connection.host || undefined,
    port: connection.port || undefined,
    socketPath: connection.socket || undefined,
    ...(connection.charset ? { charset: connection.charset } : {}),
    username: connection.user,
    password: connection.password === null ? undefined : connection.password,
    database: connection.database,
    logger,
    logging: true,
    synchronize: false,
    migrationsRun: false,
    dropSchema: false,
    migrationsTransactionMode: transactionMode(userDataSource.options),
  });
  return new userDataSource.constructor(options);
}

// The project's "none" (every migration without a transaction unless its class says
// `transaction = true`, how projects run CREATE INDEX CONCURRENTLY) is kept; "all" and the default
// run each migration in its own transaction, which faber's per-migration measure, lock check and
// report need: a failure leaves the migrations before it committed, as in "each".
function transactionMode(options) {
  return options.migrationsTransactionMode === "none" ? "none" : "each";
}
let projectTransactionMode = "each";

async function connect(dataSource, relative) {
  try {
    await faber.bounded("TypeORM's DataSource.initialize()", relative, () => dataSource.initialize());
  } catch (error) {
    if (error instanceof faber.SetupError) throw error; // a file it would load, refused
    const code = error && (error.code || (error.driverError && error.driverError.code));
    // Node's socket errors (ECONNREFUSED), PostgreSQL's SQLSTATEs, mysql2's ER_ names, and Node's TLS
    // refusals of the server's certificate (DEPTH_ZERO_SELF_SIGNED_CERT, ERR_TLS_CERT_ALTNAME_INVALID).
    const connectionCode = /^(E[A-Z]+|[0-9A-Z]{5}|ER_[A-Z0-9_]+|ERR_TLS_[A-Z_]+|[A-Z_]*(CERT|UNABLE_TO_VERIFY)[A-Z_]*)$/;
    if (code && typeof code === "string" && connectionCode.test(code)) {
      throw new faber.SetupError("connection_failed", String(error.message || error), { code });
    }
    throw new faber.SetupError("load_failed", `TypeORM could not start: ${(error && error.message) || error}`);
  }
}

// Which loaded file exports each class, from one pass over the migration files TypeORM loaded
// (CommonJS or ES modules), then over the module cache (CommonJS files the DataSource's own module
// requires to list their classes itself): looking each of a few hundred migrations up in a cache of
// a thousand modules took half a second per status. A class exported by several files belongs to
// the first of them in that order. A class no such file exports (an ES module's class the DataSource
// lists itself, a class it never exports) has no file.
function exportingFiles(projectDir) {
  const files = new Map();
  const note = (value, file) => {
    if (typeof value === "function" && !files.has(value)) files.set(value, path.relative(projectDir, file));
  };
  const cached = Object.entries(require.cache).map(([file, entry]) => ({ file, exported: entry && entry.exports }));
  for (const { file, exported } of [...loadedMigrationFiles, ...cached]) {
    note(exported, file);
    if (exported) for (const value of Object.values(exported)) note(value, file);
  }
  return files;
}

// As TypeORM's MigrationExecutor decides, by the transaction mode and the class's own `transaction`.
// MySQL commits each DDL statement on its own, so no migration there is all-or-nothing.
function isTransactional(instance) {
  const inOne = projectTransactionMode === "none" ? instance.transaction === true : instance.transaction !== false;
  return faber.engine() === "postgres" && inOne;
}

// faber's check before its lock, approval and backup (faber_migration_validate). TypeORM loaded every
// migration module as the run's first request connected (one that failed to load failed that
// request: see checkLoadedFiles); what is left is what TypeORM finds only as it runs a migration: a
// class without up(). Checked on the instances of that first request: no connection is opened.
function migrationsWithoutUp(migrations, projectDir, names) {
  const named = new Set(names);
  const refused = migrations.filter(
    (instance) => named.has(instance.name || instance.constructor.name) && typeof instance.up !== "function",
  );
  // Which file exports each class: one pass over the module cache, only when there is one to name.
  const files = refused.length > 0 ? exportingFiles(projectDir) : null;
  for (const instance of refused) {
    faber.emit("migration_load_failed", {
      name: instance.name || instance.constructor.name, // TypeORM's own naming
      file: files.get(instance.constructor) || null,
      message: "its class has no up() method",
    });
  }
  return 0;
}

async function status(dataSource, projectDir) {
  const executor = new (faber.projectRequire(projectDir, "typeorm").MigrationExecutor)(dataSource);
  const local = executor.getMigrations();
  const queryRunner = dataSource.createQueryRunner();
  try {
    // TypeORM's getExecutedMigrations() creates the table in some versions; status must not.
    const exists = await queryRunner.hasTable(executor.migrationsTable);
    const records = exists ? await executor.loadExecutedMigrations(queryRunner) : [];
    const files = exportingFiles(projectDir);
    faber.emit("status", {
      local: local.map((migration) => ({
        name: migration.name,
        path: files.get(migration.instance.constructor) || null,
        transactional: isTransactional(migration.instance),
      })),
      // TypeORM reads them newest first (by id); faber wants them in the order they ran.
      records: records.reverse().map((record) => ({ name: record.name })),
      bookkeeping_table: await bookkeepingTable(executor, queryRunner),
    });
  } finally {
    await queryRunner.release();
  }
}

async function bookkeepingTable(executor, queryRunner) {
  const schema =
    faber.engine() === "mysql"
      ? executor.migrationsDatabase || (await queryRunner.getCurrentDatabase())
      : executor.migrationsSchema || (await queryRunner.getCurrentSchema());
  return faber.qualifiedName(schema, executor.migrationsTableName);
}

// Follows TypeORM's executor through its hooks: a migration starts when TypeORM calls its up(),
// its queries run until TypeORM logs it as executed (after the bookkeeping row and the commit).
function tracker() {
  const state = {
    current: null,
    phase: null,
    started: 0,
    queryRunner: null,
    leftTransaction: false,
    lastQuery: null,
    tableWrites: null,
    finished: new Set(),
  };
  const finish = () => {
    if (!state.current) return;
    faber.emit("migration_finished", {
      name: state.current.name,
      duration_seconds: (performance.now() - state.started) / 1000,
      table_writes: state.tableWrites,
    });
    state.finished.add(state.current.name);
    state.current = null;
  };
  const logger = {
    logQuery(query, parameters, queryRunner) {
      state.lastQuery = query;
      // The migration whose async context issued the query, awaited or not; else TypeORM's bookkeeping.
      const issuedBy = faber.currentMigration();
      if (issuedBy && state.current && issuedBy.name === state.current.name) noteLeavingTransaction(query, queryRunner);
      const name = issuedBy ? issuedBy.name : state.current && state.current.name;
      if (!name) return;
      const phase = issuedBy ? "migration" : state.phase;
      faber.emit("query", { name, phase, sql: query, parameters: parameters || [] });
    },
    logQueryError(error, query) {
      state.lastQuery = query;
    },
    logQuerySlow() {},
    logSchemaBuild(message) {
      const match = SUCCESS_LOG.exec(String(message));
      if (match && state.current && state.current.name === match[1]) finish();
    },
    logMigration(message) {
      console.error(message);
    },
    log(level, message) {
      if (level !== "info" && level !== "log") console.error(message);
    },
  };
  // A transactional migration that ends the transaction TypeORM gave it (a COMMIT of its own is
  // TypeORM's way to run CREATE INDEX CONCURRENTLY) or runs a query on another connection commits
  // work of its own: said as it is issued, so that faber never reports it rolled back.
  const noteLeavingTransaction = (query, queryRunner) => {
    if (state.leftTransaction || !isTransactional(state.current.instance)) return;
    if (queryRunner === state.queryRunner && !TRANSACTION_CONTROL.test(query)) return;
    state.leftTransaction = true;
    faber.emit("migration_outside_transaction", { name: state.current.name });
  };
  const wrap = (migration, lockCheck) => {
    const instance = migration.instance;
    const up = instance.up.bind(instance);
    instance.up = async (queryRunner) => {
      finish();
      await faber.migrationStarted({ name: migration.name, transactional: isTransactional(instance) });
      // faber's own statements go on the driver's connection itself: none is one of its queries.
      const onConnection = (statement) => queryRunner.databaseConnection.query(statement);
      // Measured in its transaction.
      const writes = faber.writesMeasurement((statement) => onConnection(statement).then((result) => result.rows));
      const measured = writes !== null && isTransactional(instance);
      // In the transaction TypeORM just started for it (just before it, for one with transaction = false),
      // with the measure's start in the same message.
      await faber.checkLock(lockCheck, onConnection, {
        inTransaction: isTransactional(instance),
        followedBy: measured ? writes.start : [],
      });
      state.tableWrites = null;
      state.current = migration;
      state.phase = "migration";
      state.started = performance.now();
      state.queryRunner = queryRunner;
      state.leftTransaction = false;
      // Schema builder calls and queryRunner.manager end in queryRunner.query as well.
      const ownQuery = Object.prototype.hasOwnProperty.call(queryRunner, "query") ? queryRunner.query : null;
      queryRunner.query = faber.trackQueries(queryRunner.query);
      try {
        await faber.runMigration(migration.name, () => up(queryRunner));
      } catch (error) {
        // What it tried counts too (rolled-back rows are in the server's counters all the same).
        if (measured && !state.leftTransaction) state.tableWrites = await writes.measure("failure");
        throw error;
      } finally {
        if (ownQuery) queryRunner.query = ownQuery;
        else delete queryRunner.query;
        // What follows is TypeORM's own: the bookkeeping row, COMMIT or ROLLBACK.
        state.phase = "bookkeeping";
      }
      if (writes) state.tableWrites = await writes.measure(measured && !state.leftTransaction ? "commit" : "unmeasured");
    };
  };
  return { state, logger, wrap, finish };
}

function failureFields(error, state, pendingNames) {
  const driverError = (error && error.driverError) || error || {};
  const migration = state.current;
  if (error instanceof faber.Stopped) {
    return {
      name: pendingNames.find((name) => !state.finished.has(name)),
      message: error.message,
      transaction_rolled_back: false,
      started: false,
      duration_seconds: 0,
      table_writes: faber.nothingWritten(),
    };
  }
  if (error instanceof faber.LockCheckFailed) {
    return {
      name: pendingNames.find((name) => !state.finished.has(name)),
      table_writes: faber.nothingWritten(),
      ...error.fields,
    };
  }
  return {
    // No migration running yet: TypeORM failed preparing (e.g. creating its table); the first
    // pending migration is the one that could not be applied, and nothing of it ran.
    name: migration ? migration.name : pendingNames.find((name) => !state.finished.has(name)),
    code: faber.errorCode(driverError),
    message: faber.describe(error),
    query: (error && error.query) || state.lastQuery,
    transaction_rolled_back: migration ? isTransactional(migration.instance) && !state.leftTransaction : true,
    duration_seconds: migration ? (performance.now() - state.started) / 1000 : 0,
    table_writes: migration ? state.tableWrites : faber.nothingWritten(),
  };
}

async function apply(dataSource, projectDir, track, request) {
  // One session runs every migration and its bookkeeping, given the environment's timeouts first.
  const queryRunner = dataSource.createQueryRunner();
  try {
    for (const statement of request.session_statements || []) await queryRunner.query(statement);
    // Held by this session until it ends, with its transaction: a run that takes faber's lock after
    // this one lost it finds the migration still open here (its transaction may yet commit).
    if (request.migration_lock) await queryRunner.query(request.migration_lock);
    const executor = new (faber.projectRequire(projectDir, "typeorm").MigrationExecutor)(dataSource, queryRunner);
    executor.transaction = projectTransactionMode;
    const pending = executor.getMigrations();
    const exists = await queryRunner.hasTable(executor.migrationsTable);
    const applied = new Set(exists ? (await executor.loadExecutedMigrations(queryRunner)).map((r) => r.name) : []);
    const pendingNames = pending.filter((m) => !applied.has(m.name)).map((m) => m.name);
    faber.requireExpectedPlan(request.expected, pendingNames);
    if (faber.engine() === "postgres") {
      // Which server session runs the migrations: if faber is stopped by a signal while one runs
      // (and stops this runner), it ends that session and reads in the table which committed.
      const [session] = await queryRunner.query(
        "SELECT pg_backend_pid() AS pid, (extract(epoch FROM backend_start) * 1000000)::bigint::text AS started" +
          " FROM pg_stat_activity WHERE pid = pg_backend_pid()",
      );
      faber.emit("migration_session", {
        pid: session.pid,
        started: session.started,
        bookkeeping_table: await bookkeepingTable(executor, queryRunner),
      });
    }
    for (const migration of pending) track.wrap(migration, request.lock_check);
    try {
      await executor.executePendingMigrations();
      track.finish();
      return 0;
    } catch (error) {
      faber.emit("migration_failed", failureFields(error, track.state, pendingNames));
      return faber.MIGRATION_FAILED_EXIT;
    }
  } finally {
    await queryRunner.release();
  }
}

// `faber resolve --applied`: records a pending migration as executed, its up() not called, as
// `typeorm migration:run --fake` records each one: the table created if missing, then TypeORM's row.
async function markApplied(dataSource, projectDir, name) {
  const queryRunner = dataSource.createQueryRunner();
  try {
    const executor = new (faber.projectRequire(projectDir, "typeorm").MigrationExecutor)(dataSource, queryRunner);
    const exists = await queryRunner.hasTable(executor.migrationsTable);
    const applied = new Set(exists ? (await executor.loadExecutedMigrations(queryRunner)).map((r) => r.name) : []);
    const migration = executor.getMigrations().find((m) => m.name === name && !applied.has(m.name));
    if (!migration) {
      const table = await bookkeepingTable(executor, queryRunner);
      throw new faber.SetupError("plan_mismatch", `${name} is not a pending migration of ${table}`);
    }
    await executor.createMigrationsTableIfNotExist(queryRunner);
    await executor.insertExecutedMigration(queryRunner, migration);
    return 0;
  } finally {
    await queryRunner.release();
  }
}

// Each request gets a DataSource of its own on the request's database, connected for that request
// only: between requests the runner holds no connection.
async function connected(userDataSource, run, request, work) {
  const track = tracker();
  const dataSource = retarget(userDataSource, request.connection, track.logger, run.migrationClasses);
  await connect(dataSource, run.dataSourceFile);
  run.migrations = run.migrations || dataSource.migrations;
  run.migrationClasses = run.migrationClasses || run.migrations.map((migration) => migration.constructor);
  try {
    return await work(dataSource, track);
  } finally {
    await dataSource.destroy().catch(() => {});
  }
}

async function load(options) {
  const projectDir = process.cwd();
  const dataSourceFile = options["data-source"] || "data-source.js";
  const userDataSource = await loadDataSource(projectDir, dataSourceFile);
  // The project's migrations are found once per run, by its first request that connects (TypeORM
  // searches the DataSource's migration folders as it connects); the later ones (the status under
  // faber's lock, the apply, the status after it, a rehearsal) get those classes. So every request
  // of a run sees the migrations faber analysed and approved, a file added meanwhile waiting for
  // the next run, and none searches the folders again (10-60 ms each for 300 migrations).
  const run = { migrations: null, migrationClasses: null, dataSourceFile };
  return {
    status: (request) =>
      connected(userDataSource, run, request, async (dataSource) => {
        await status(dataSource, projectDir);
        return 0;
      }),
    apply: (request) =>
      connected(userDataSource, run, request, (dataSource, track) => apply(dataSource, projectDir, track, request)),
    mark_applied: (request) =>
      connected(userDataSource, run, request, (dataSource) => markApplied(dataSource, projectDir, request.migrations[0])),
    load: async (request) => {
      if (!run.migrations) await connected(userDataSource, run, request, async () => 0); // a runner started anew
      return migrationsWithoutUp(run.migrations, projectDir, request.migrations);
    },
  };
}

faber.serve(load);
