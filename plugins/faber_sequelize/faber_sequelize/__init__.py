"""faber handler for Sequelize migrations."""

TOOL = "sequelize"
