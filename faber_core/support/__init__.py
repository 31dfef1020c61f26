"""Helpers for plugin authors, kept stable across faber releases.

A plugin imports from faber only ``faber_core`` (``hookimpl``), ``faber_core.models``,
``faber_core.errors``, ``faber_core.context`` (``RunContext``, ``Database``),
``faber_core.testing`` (in its tests) and these modules:

- :mod:`faber_core.support.programs`: finding client programs (on ``PATH``, then beside the
  Python running faber) and running them without credentials in argv;
- :mod:`faber_core.support.sql`: statement splitting, transactional classification, estimates;
- :mod:`faber_core.support.files`: reading migration files safely;
- :mod:`faber_core.support.sessions`: advisory locks, blocked reads, measuring a migration's
  writes (and, on the run context, ``apply_session_timeouts`` and ``session_timeout_env``);
- :mod:`faber_core.support.backups`: the crash-safe manifest store and the schema-drop prelude
  of a restore, for backup providers;
- :mod:`faber_core.support.scratch_folders`: a private folder in the temporary directory for the
  files a step writes (a restore's SQL script), removed by the next run when this one is killed;
- :mod:`faber_core.support.mysql`: MySQL/MariaDB statement splitting, DDL detection, error
  numbers and faber's lock name (the engine itself: ``context.database.engine``, :mod:`faber_core.engines`);
- :mod:`faber_core.support.node`: a migration-tool handler whose work a Node script does (the
  TypeORM and Sequelize handlers are built on it).

Everything else in ``faber_core`` may change between releases.
"""
