"use strict";
// faber's Sequelize runner. Reads .sequelizerc and the config the way sequelize-cli does, and for
// each of faber's requests opens the project's own Sequelize on faber's database and reports the
// migration status or applies pending migrations, keeping the SequelizeMeta table exactly as
// sequelize-cli (umzug) keeps it. Speaks JSON lines on faber's protocol pipe (see
// faber_core/support/node); whatever anyone prints is output.
//
//   node runner.cjs [--env NAME] [--environment FABER_ENV]     (requests on stdin)
//
// Besides faber's common requests, `layout` (faber init, no connection) reports the config file and
// the migrations folder: {"event": "layout", "config": "db/config.js", "migrations": "db/migrations"}.
//
// Each request's connection replaces the config's connection options.
//
// The bookkeeping is written here with Sequelize itself rather than through umzug: every
// Sequelize project has `sequelize`, while umzug is only a transitive dependency of
// sequelize-cli (version 2, whose API differs from umzug 3); SequelizeMeta is one column.

const fs = require("fs");
const path = require("path");
const { pathToFileURL } = require("url");
const { performance } = require("perf_hooks");

const faber = require(process.env.FABER_RUNNER_COMMON); // faber_core/support/node/runner-common.cjs
// sequelize-cli's own pattern for migration files.
const MIGRATION_FILE = /^(?!.*\.d\.ts$).*\.(cjs|js|cts|ts)$/;
const CONNECTION_KEYS = ["username", "password", "database", "host", "port", "url", "use_env_variable", "replication"];
// What the driver options (`dialectOptions`) may not say: where to connect; mysql2 also reads a `uri` for
// every option left unset, and a `stream` is a connection of its own.
const DIALECT_CONNECTION_KEYS = ["host", "port", "user", "password", "database", "socketPath", "connectionString", "uri", "stream"];
const LOGGED_QUERY = /^Executing \([^)]*\): /s;
// The config dialects faber deploys to each engine's servers. A MySQL or MariaDB project keeps its
// own dialect, so Sequelize loads the driver the project installed for it (mysql2, or mariadb).
const DIALECTS = { postgres: ["postgres"], mysql: ["mysql", "mariadb"] };
// How each engine answers "which schema am I in" and "does this table exist".
const CATALOG = {
  postgres: {
    currentSchema: "SELECT current_schema() AS schema",
    tableExists: "SELECT to_regclass(:qualified) IS NOT NULL AS exists",
  },
  mysql: {
    currentSchema: "SELECT DATABASE() AS `schema`",
    tableExists:
      "SELECT COUNT(*) > 0 AS `exists` FROM information_schema.tables WHERE table_schema = :schema AND table_name = :table",
  },
};

async function loadModule(projectDir, file) {
  const relative = path.relative(projectDir, file);
  faber.registerTypeScript(projectDir, relative);
  try {
    try {
      return require(file);
    } catch (error) {
      if (error && error.code === "ERR_REQUIRE_ESM") return await import(pathToFileURL(file).href);
      throw error;
    }
  } catch (error) {
    if (error instanceof faber.SetupError) throw error;
    throw new faber.SetupError("load_failed", faber.loadFailure(error, file), { file: relative });
  }
}

// sequelize-cli: .sequelizerc may name the config file and the migrations directory.
async function projectLayout(projectDir) {
  const rcFile = path.join(projectDir, ".sequelizerc");
  const rc = fs.existsSync(rcFile)
    ? await faber.bounded("sequelize-cli's options", ".sequelizerc", () => loadModule(projectDir, rcFile))
    : {};
  const defaultConfig = path.join(projectDir, "config", "config.json");
  const alternative = defaultConfig.replace(/\.json$/, ".js");
  const configFile = rc.config
    ? path.resolve(projectDir, rc.config)
    : fs.existsSync(alternative)
      ? alternative
      : defaultConfig;
  const migrationsDir = path.resolve(projectDir, rc["migrations-path"] || "migrations");
  return { configFile, migrationsDir };
}

async function readConfig(projectDir, configFile) {
  if (!fs.existsSync(configFile)) return {};
  if (configFile.endsWith(".json")) {
    try {
      return JSON.parse(fs.readFileSync(configFile, "utf8"));
    } catch (error) {
      throw new faber.SetupError("load_failed", String(error.message), { file: path.relative(projectDir, configFile) });
    }
  }
  // A config module may export a function or a Promise of the config: awaited within faber's deadline.
  return faber.bounded("the Sequelize config", path.relative(projectDir, configFile), async () => {
    const exported = await loadModule(projectDir, configFile);
    const config = exported && exported.__esModule && exported.default ? exported.default : exported;
    return typeof config === "function" ? await config() : await config;
  });
}

// The section sequelize-cli would use: --env, else the faber environment's own section, else development.
function configSection(config, options) {
  const name = options.env || [options.environment, "development"].find((candidate) => candidate in config);
  if (options.env && !(options.env in config)) {
    throw new faber.SetupError("unsupported", `The Sequelize config has no "${options.env}" section`);
  }
  return name ? config[name] : {};
}

function storageOf(section) {
  const storage = section.migrationStorage || "sequelize";
  if (storage !== "sequelize") {
    throw new faber.SetupError(
      "unsupported",
      `migrationStorage "${storage}" is not supported: faber reads and writes the migration history in the ` +
        `database (migrationStorage "sequelize"), where its lock and backups cover it`,
    );
  }
  return {
    tableName: section.migrationStorageTableName || "SequelizeMeta",
    schema: section.migrationStorageTableSchema,
    timestamps: Boolean(section.migrationTimestamps),
  };
}

function openSequelize(projectDir, section, request, logging) {
  const SequelizeModule = faber.projectRequire(projectDir, "sequelize");
  const dialects = DIALECTS[faber.engine()];
  if (section.dialect && !dialects.includes(section.dialect)) {
    throw faber.wrongEngine(DIALECTS, "this config's dialect", section.dialect);
  }
  const dialect = section.dialect || dialects[0];
  const connection = request.connection;
  const options = { ...section };
  for (const key of CONNECTION_KEYS) delete options[key];
  // The MySQL and MariaDB drivers take dialectOptions over Sequelize's own: none of it may say where
  // to connect.
  const dialectOptions = { ...section.dialectOptions };
  for (const key of DIALECT_CONNECTION_KEYS) delete dialectOptions[key];
  if (connection.socket) dialectOptions.socketPath = connection.socket;
  if (connection.charset) dialectOptions.charset = connection.charset;
  const ssl = faber.tlsOptions(connection.tls);
  if (ssl !== undefined) dialectOptions.ssl = ssl;
  if (connection.engine === "postgres") {
    // node-postgres takes `options` over PGOPTIONS, which carries faber's timeouts: the project's own
    // options, the URL's and the timeouts, the timeouts last.
    const sessionOptions = [dialectOptions.options, connection.options, process.env.PGOPTIONS].filter(Boolean);
    if (sessionOptions.length > 0) dialectOptions.options = sessionOptions.join(" ");
  }
  if (connection.application_name) dialectOptions.application_name = connection.application_name;
  // Where faber's own connections go, as explicit options: Sequelize's URL parser (and the drivers'
  // under it) would read faber's URL differently (?socket=, ?dbname=, ?host=, ...).
  Object.assign(options, {
    dialect,
    dialectOptions,
    host: connection.host || undefined,
    port: connection.port || undefined,
    username: connection.user,
    password: connection.password === null ? undefined : connection.password,
    database: connection.database,
    logging,
    benchmark: false,
    logQueryParameters: false,
  });
  const sequelize = new SequelizeModule.Sequelize(options);
  // Every session Sequelize opens for the migrations gets the environment's timeouts first (MySQL).
  const statements = request.session_statements || [];
  if (statements.length > 0) sequelize.addHook("afterConnect", (connection) => runFirst(connection, statements));
  return { SequelizeModule, sequelize };
}

// mysql2's connections are callback-style with a promise() wrapper; mariadb's return promises.
async function runFirst(connection, statements) {
  const session = typeof connection.promise === "function" ? connection.promise() : connection;
  for (const statement of statements) await session.query(statement);
}

async function connect(sequelize, relative) {
  try {
    await faber.bounded("Sequelize's authenticate()", relative, () => sequelize.authenticate());
  } catch (error) {
    const original = (error && (error.original || error.parent)) || error || {};
    throw new faber.SetupError("connection_failed", String(error.message || error), { code: original.code || null });
  }
}

// Each one a regular file, refused otherwise as the status lists it: before faber backs anything
// up, and long before the apply loads the pending ones.
function localMigrations(projectDir, migrationsDir) {
  if (!fs.existsSync(migrationsDir)) return [];
  const files = fs.readdirSync(migrationsDir).filter((file) => MIGRATION_FILE.test(file)).sort();
  for (const file of files) faber.requireRegularFile(projectDir, path.join(migrationsDir, file), "Migration file");
  return files.map((file) => ({ name: file, path: path.relative(projectDir, path.join(migrationsDir, file)) }));
}

async function bookkeepingTable(sequelize, storage) {
  const catalog = CATALOG[faber.engine()];
  const schema = storage.schema || (await sequelize.query(catalog.currentSchema, { plain: true })).schema;
  return { schema, table: storage.tableName, qualified: faber.qualifiedName(schema, storage.tableName) };
}

async function tableExists(sequelize, bookkeeping) {
  const found = await sequelize.query(CATALOG[faber.engine()].tableExists, { replacements: bookkeeping, plain: true });
  return Boolean(Number(found.exists));
}

async function appliedNames(sequelize, bookkeeping) {
  if (!(await tableExists(sequelize, bookkeeping))) return [];
  const rows = await sequelize.query(`SELECT name FROM ${bookkeeping.qualified} ORDER BY name`, { type: "SELECT" });
  return rows.map((row) => row.name);
}

// The model sequelize-cli's storage (umzug 2's SequelizeStorage) defines, so sync() creates the same
// table; its charset and collation take effect on MySQL/MariaDB only.
function metaModel(sequelize, SequelizeModule, storage) {
  return sequelize.define(
    "SequelizeMeta",
    {
      name: {
        type: SequelizeModule.DataTypes.STRING,
        allowNull: false,
        unique: true,
        primaryKey: true,
        autoIncrement: false,
      },
    },
    {
      tableName: storage.tableName,
      schema: storage.schema,
      timestamps: storage.timestamps,
      charset: "utf8",
      collate: "utf8_unicode_ci",
    },
  );
}

// The history table as sequelize-cli's storage prepares it before it records a migration: created
// (with its schema) when missing, and a table that has timestamps keeps getting them.
async function preparedMeta(context, table) {
  const { sequelize, SequelizeModule, storage } = context;
  const queryInterface = sequelize.getQueryInterface();
  if (await tableExists(sequelize, table)) {
    const columns = await queryInterface.describeTable({ tableName: storage.tableName, schema: storage.schema });
    storage.timestamps = storage.timestamps || "createdAt" in columns;
  } else if (storage.schema) {
    await queryInterface.createSchema(storage.schema);
  }
  const Meta = metaModel(sequelize, SequelizeModule, storage);
  await Meta.sync();
  return Meta;
}

async function migrationSteps(projectDir, migration) {
  const file = path.join(projectDir, migration.path);
  // A module the load check loaded comes from Node's module cache: none of its code runs again, so
  // there is no step to bound (nor two protocol lines per migration for faber to read).
  const cached = require.cache[file];
  const exported =
    cached && cached.loaded
      ? cached.exports
      : await faber.bounded("the migration", migration.path, () =>
          faber.exitRefused(() => loadModule(projectDir, file)),
        );
  const steps = exported && typeof exported.up !== "function" && exported.default ? exported.default : exported;
  if (!steps || typeof steps.up !== "function") {
    throw new faber.SetupError("load_failed", "it exports no up() function", { file: migration.path });
  }
  return steps;
}

// faber's check before its lock, approval and backup (faber_migration_validate): each of the named
// pending migrations loaded as the apply loads it, its up() not called, and each one that cannot be
// loaded reported (migration_load_failed) rather than thrown, so that all of them are named at once.
// Node keeps the modules that loaded: the apply later gets them from its module cache, so each
// module's top-level code runs once per run, as before, only sooner. No connection is opened.
async function loadPending(projectDir, migrationsDir, names) {
  const named = new Set(names);
  for (const migration of localMigrations(projectDir, migrationsDir).filter((m) => named.has(m.name))) {
    try {
      await migrationSteps(projectDir, migration);
    } catch (error) {
      if (!(error instanceof faber.SetupError && error.kind === "load_failed")) throw error;
      faber.emit("migration_load_failed", { name: migration.name, file: migration.path, message: error.message });
    }
  }
  return 0;
}

async function status(context) {
  const { sequelize, storage, projectDir, migrationsDir } = context;
  const table = await bookkeepingTable(sequelize, storage);
  faber.emit("status", {
    local: localMigrations(projectDir, migrationsDir).map((m) => ({ ...m, transactional: false })),
    records: (await appliedNames(sequelize, table)).map((name) => ({ name })),
    bookkeeping_table: table.qualified,
  });
  return 0;
}

async function apply(context, track, expected, lockCheck) {
  const { sequelize, SequelizeModule, storage, projectDir, migrationsDir } = context;
  const table = await bookkeepingTable(sequelize, storage);
  const applied = new Set(await appliedNames(sequelize, table));
  const pending = localMigrations(projectDir, migrationsDir).filter((m) => !applied.has(m.name));
  faber.requireExpectedPlan(expected, pending.map((m) => m.name));
  if (pending.length === 0) return 0;
  // Every pending file loads before the first one runs (sequelize-cli loads each as it runs it): a
  // file that cannot load is a broken setup, found before anything is applied. A deploy loaded them
  // all before its lock (loadPending): these come from Node's module cache.
  for (const migration of pending) migration.steps = await migrationSteps(projectDir, migration);
  const queryInterface = sequelize.getQueryInterface();
  const Meta = await preparedMeta(context, table);
  for (const migration of pending) {
    const started = performance.now();
    try {
      await faber.migrationStarted({ name: migration.name, transactional: false });
      // Just before the migration: sequelize-cli gives it no transaction of its own.
      await faber.checkLock(lockCheck, (statement) => sequelize.query(statement), { inTransaction: false });
      track.current = migration.name;
      track.phase = "migration";
      await faber.runMigration(migration.name, () => migration.steps.up(queryInterface, SequelizeModule));
      track.phase = "bookkeeping";
      await Meta.create({ name: migration.name });
    } catch (error) {
      if (error instanceof faber.LockCheckFailed) {
        faber.emit("migration_failed", { name: migration.name, ...error.fields });
        return faber.MIGRATION_FAILED_EXIT;
      }
      const original = (error && (error.original || error.parent)) || {};
      faber.emit("migration_failed", {
        name: migration.name,
        code: faber.errorCode(original),
        message: faber.describe(error),
        query: (error && error.sql) || track.lastQuery,
        // sequelize-cli runs a migration without a transaction: what ran before the failure stays.
        transaction_rolled_back: false,
        duration_seconds: (performance.now() - started) / 1000,
      });
      return faber.MIGRATION_FAILED_EXIT;
    }
    faber.emit("migration_finished", { name: migration.name, duration_seconds: (performance.now() - started) / 1000 });
    track.current = null;
  }
  return 0;
}

// `faber resolve --applied`: records a pending migration as run, its up() not called, with the row
// sequelize-cli writes once a migration has run.
async function markApplied(context, name) {
  const { sequelize, projectDir, migrationsDir } = context;
  const table = await bookkeepingTable(sequelize, context.storage);
  const applied = new Set(await appliedNames(sequelize, table));
  if (!localMigrations(projectDir, migrationsDir).some((m) => m.name === name && !applied.has(m.name))) {
    throw new faber.SetupError("plan_mismatch", `${name} is not a pending migration of ${table.qualified}`);
  }
  const Meta = await preparedMeta(context, table);
  await Meta.create({ name });
  return 0;
}

function tracker() {
  const track = { current: null, phase: null, lastQuery: null };
  track.logging = (message, options) => {
    const sql = String(message).replace(LOGGED_QUERY, "");
    track.lastQuery = sql;
    // The migration whose async context issued the query, awaited or not; else faber's bookkeeping.
    const issuedBy = faber.currentMigration();
    const name = issuedBy ? issuedBy.name : track.current;
    if (!name) return;
    const bind = options && options.bind;
    faber.emit("query", {
      name,
      phase: issuedBy ? "migration" : track.phase,
      sql,
      parameters: Array.isArray(bind) ? bind : bind ? Object.values(bind) : [],
    });
  };
  return track;
}

// Each request reads the config and opens a Sequelize of its own on the request's database,
// connected for that request only: between requests the runner holds no connection.
async function connected(projectDir, layout, options, request, work) {
  const section = configSection(await readConfig(projectDir, layout.configFile), options);
  const storage = storageOf(section);
  const track = tracker();
  const { sequelize, SequelizeModule } = openSequelize(projectDir, section, request, track.logging);
  // Every QueryInterface call ends in sequelize.query: the migration learns which queries it started.
  sequelize.query = faber.trackQueries(sequelize.query);
  try {
    await connect(sequelize, path.relative(projectDir, layout.configFile));
    return await work({ sequelize, SequelizeModule, storage, projectDir, migrationsDir: layout.migrationsDir }, track);
  } finally {
    await sequelize.close().catch(() => {});
  }
}

// faber init: where sequelize-cli finds the config and the migrations, read as every other command
// reads them. Needs no database.
function reportLayout(projectDir, layout) {
  faber.emit("layout", {
    config: path.relative(projectDir, layout.configFile),
    migrations: path.relative(projectDir, layout.migrationsDir),
  });
  return 0;
}

async function load(options) {
  const projectDir = process.cwd();
  faber.projectRequire(projectDir, "sequelize");
  const layout = await projectLayout(projectDir);
  return {
    layout: () => reportLayout(projectDir, layout),
    status: (request) => connected(projectDir, layout, options, request, (context) => status(context)),
    load: (request) => loadPending(projectDir, layout.migrationsDir, request.migrations),
    apply: (request) =>
      connected(projectDir, layout, options, request, (context, track) => apply(context, track, request.expected, request.lock_check)),
    mark_applied: (request) =>
      connected(projectDir, layout, options, request, (context) => markApplied(context, request.migrations[0])),
  };
}

faber.serve(load);
