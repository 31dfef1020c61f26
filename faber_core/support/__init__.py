"""Helpers for plugin authors, kept stable across faber releases.

- :mod:`faber_core.support.node`: a migration-tool handler whose work a Node script does (the
  TypeORM and Sequelize handlers are built on it).
"""
