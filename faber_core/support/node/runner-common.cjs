"use strict";
// What every faber ORM runner shares: the JSON-lines protocol on stdout, setup errors, the
// database URL taken out of the environment before project code loads, the approved plan, and
// loading modules from the project's own node_modules. See faber_core/support/node/__init__.py.

const { AsyncLocalStorage } = require("async_hooks");

const protocol = process.stdout;
for (const method of ["log", "info", "debug"]) {
  // Migrations and project modules may log; stdout belongs to the protocol.
  console[method] = (...args) => console.error(...args);
}

const databaseUrl = process.env.FABER_DATABASE_URL;
// Project code must not be able to print what it was never meant to see.
delete process.env.FABER_DATABASE_URL;
const expectedPlan = process.env.FABER_EXPECTED_MIGRATIONS;

const SETUP_ERROR_EXIT = 2;
const MIGRATION_FAILED_EXIT = 1;

function emit(event, fields = {}) {
  protocol.write(JSON.stringify({ event, ...fields }) + "\n");
}

class SetupError extends Error {
  constructor(kind, message, fields = {}) {
    super(message);
    this.kind = kind;
    this.fields = fields;
  }
}

// faber shows and approves a list of migrations; exactly that list runs, or nothing does.
function requireExpectedPlan(pendingNames) {
  if (expectedPlan === undefined) return;
  const expected = JSON.parse(expectedPlan);
  if (JSON.stringify(expected) !== JSON.stringify(pendingNames)) {
    throw new SetupError(
      "plan_mismatch",
      `faber expected to apply [${expected.join(", ")}] but the ORM would apply [${pendingNames.join(", ")}]`,
    );
  }
}

function parseArgs(argv) {
  const [command, ...rest] = argv;
  const options = {};
  for (let i = 0; i < rest.length; i += 2) options[rest[i].replace(/^--/, "")] = rest[i + 1];
  return { command, options };
}

function projectRequire(projectDir, moduleName) {
  let resolved;
  try {
    resolved = require.resolve(moduleName, { paths: [projectDir] });
  } catch {
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

function exit(code) {
  protocol.write("", () => process.exit(code));
}

// Runs the runner's main(); a setup problem, or an error the ORM raised outside any migration,
// becomes one setup_error event and exit code 2.
function run(main) {
  main().then(exit, (error) => {
    if (error instanceof SetupError) {
      emit("setup_error", { kind: error.kind, message: error.message, ...error.fields });
    } else {
      emit("setup_error", { kind: "invalid", message: String((error && error.message) || error) });
      console.error(error && error.stack);
    }
    exit(SETUP_ERROR_EXIT);
  });
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
function trackQueries(query) {
  return function trackedQuery(...args) {
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
  databaseUrl,
  MIGRATION_FAILED_EXIT,
  emit,
  SetupError,
  requireExpectedPlan,
  parseArgs,
  projectRequire,
  registerTypeScript,
  run,
  currentMigration,
  runMigration,
  trackQueries,
};
