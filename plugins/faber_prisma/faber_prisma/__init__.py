"""faber's Prisma handler: deploys ``prisma/migrations`` without Node, interchangeably with
``prisma migrate deploy``."""

TOOL = "prisma"
