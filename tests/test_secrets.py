from __future__ import annotations

import json
import random
import re
import shutil
import string
import subprocess
from urllib.parse import quote

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from faber_core.context import Database
from faber_core.secrets import MASK, Redactor, Secret
from faber_core.sql_passwords import passwords_in_sql


def test_secret_never_shows_its_value():
    secret = Secret("postgresql://app:hunter22@db/app")

    assert str(secret) == repr(secret) == f"{secret}" == MASK
    assert secret.reveal().endswith("@db/app")


def test_url_userinfo_is_masked_where_a_colon_after_a_schemes_character_starts_it():
    """The pattern starts at the ':' and checks the character before it afterwards (faster to
    search); it masks exactly what the lookbehind before the ':' masked, on texts built from the
    pieces that decide a match."""
    before = re.compile(r"(?<=[a-zA-Z0-9+.-])(?P<scheme>:/+)(?P<user>[^:@/\s]*):(?P<password>[^@/\s]*)@")
    pieces = ["pg", "://", ":/", ":", "@", "/", " ", "u", "p:w", "+", ".", "-", "_", "é", "\n", "1", "::", "//", "a:b@"]
    generate = random.Random(11)
    texts = ["".join(generate.choice(pieces) for _ in range(generate.randint(0, 14))) for _ in range(20_000)]
    redactor = Redactor()  # no secret known, and no password setting among the pieces: URLs only

    assert sum(1 for text in texts if before.search(text)) > 400
    for text in texts:
        assert redactor.redact(text) == before.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text), text


def test_redactor_masks_known_values_in_raw_and_encoded_forms():
    redactor = Redactor()
    redactor.add("postgresql://app:p%40ss%2Fword@db.internal:5432/app")

    text = redactor.redact("failed for p@ss/word and p%40ss%2Fword")

    assert "p@ss/word" not in text and "p%40ss%2Fword" not in text


def test_redactor_masks_any_url_userinfo_and_password_settings():
    redactor = Redactor()

    text = redactor.redact(
        "connect postgres://bob:s3cret@host/db failed; dsn: host=x password=hunter2 sslpassword=keypass user=y"
    )

    assert "s3cret" not in text and "hunter2" not in text and "keypass" not in text
    assert "postgres://bob:***@host/db" in text and "sslpassword=***" in text and "user=y" in text


@pytest.mark.parametrize(
    ("sql", "shown"),
    [
        ("CREATE ROLE app LOGIN PASSWORD 'it''s-s3cret';", "CREATE ROLE app LOGIN PASSWORD '***';"),
        ("ALTER ROLE app WITH ENCRYPTED PASSWORD E's3cret'", "ALTER ROLE app WITH ENCRYPTED PASSWORD E'***'"),
        ("CREATE USER 'app'@'%' IDENTIFIED BY 's3cret'", "CREATE USER 'app'@'%' IDENTIFIED BY '***'"),
        (
            "ALTER USER app IDENTIFIED WITH caching_sha2_password BY 's3cret'",
            "ALTER USER app IDENTIFIED WITH caching_sha2_password BY '***'",
        ),
        ("ALTER TABLE users ADD COLUMN password text", "ALTER TABLE users ADD COLUMN password text"),
        ("SELECT 'password' AS label", "SELECT 'password' AS label"),
        ("CREATE ROLE a PASSWORD $$s3cret$$;", "CREATE ROLE a PASSWORD $$***$$;"),
        ("CREATE ROLE a PASSWORD $pw$s3'cret$pw$;", "CREATE ROLE a PASSWORD $pw$***$pw$;"),
        ("CREATE ROLE a PASSWORD /* why */ 's3cret'", "CREATE ROLE a PASSWORD /* why */ '***'"),
        ("CREATE ROLE a PASSWORD -- why\n  's3cret'", "CREATE ROLE a PASSWORD -- why\n  '***'"),
        ("CREATE ROLE a PASSWORD U&'s3cret'", "CREATE ROLE a PASSWORD U&'***'"),
        ("CREATE ROLE a PASSWORD E'it\\'s-s3cret'", "CREATE ROLE a PASSWORD E'***'"),
        ("CREATE USER 'a'@'%' IDENTIFIED BY \"s3cret\"", "CREATE USER 'a'@'%' IDENTIFIED BY \"***\""),
        ("SET PASSWORD FOR 'a'@'%' = 's3cret'", "SET PASSWORD FOR 'a'@'%' = '***'"),
        ("SET PASSWORD FOR a = PASSWORD('s3cret')", "SET PASSWORD FOR a = PASSWORD('***')"),
        ('{"password": "not SQL"}', '{"password": "not SQL"}'),
        ("ALTER ROLE a PASSWORD's3cret'", "ALTER ROLE a PASSWORD'***'"),
        (
            "ALTER ROLE a PASSWORD 'ends\\';\nALTER ROLE b PASSWORD 's3cret';",
            "ALTER ROLE a PASSWORD '***';\nALTER ROLE b PASSWORD '***';",
        ),
        ("ALTER ROLE a PASSWORD 's3'\n  'cret';", "ALTER ROLE a PASSWORD '***';"),
        ("SELECT password_hash FROM users WHERE x = 'y'", "SELECT password_hash FROM users WHERE x = 'y'"),
        ("CHANGE MASTER TO MASTER_PASSWORD = 's3cret'", "CHANGE MASTER TO MASTER_PASSWORD = '***'"),
        ("CREATE USER a IDENTIFIED /* c */ BY 's3cret'", "CREATE USER a IDENTIFIED /* c */ BY '***'"),
        ("CREATE USER a IDENTIFIED VIA ed25519 USING 's3cret'", "CREATE USER a IDENTIFIED VIA ed25519 USING '***'"),
        (
            "CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'app', \"password\" 's3cret')",
            "CREATE USER MAPPING FOR app SERVER s OPTIONS (user 'app', \"password\" '***')",
        ),
    ],
)
def test_a_password_a_migration_gives_a_role_is_masked_wherever_its_sql_is_shown(sql, shown):
    """No URL holds a role's password written into a migration: the preview, the audit log and a
    database error quoting the statement would show it."""
    assert Redactor().redact(sql) == shown


ROLE_CANARY = "role-Pw-5e1d9b"


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        # Dynamic SQL: the password quoted inside a literal, or given to it by the expression.
        ("postgresql", "DO $$ BEGIN\n  EXECUTE 'CREATE ROLE x LOGIN PASSWORD ''role-Pw-5e1d9b''';\nEND $$;"),
        (
            "postgresql",
            "DO $$ BEGIN EXECUTE 'CREATE ROLE x LOGIN PASSWORD ' || quote_literal('role-Pw-5e1d9b'); END $$;",
        ),
        ("postgresql", "DO $$ BEGIN EXECUTE format('CREATE ROLE %I PASSWORD %L', 'x', 'role-Pw-5e1d9b'); END $$;"),
        ("postgresql", "DO $$ BEGIN EXECUTE format('ALTER ROLE %2$I PASSWORD %1$L', 'role-Pw-5e1d9b', 'x'); END $$;"),
        ("mysql", "SET @s = 'CREATE USER x IDENTIFIED BY ''role-Pw-5e1d9b'''; PREPARE st FROM @s; EXECUTE st;"),
        ("mysql", "SET @s = CONCAT('CREATE USER x IDENTIFIED BY ''', 'role-Pw-5e1d9b', ''''); PREPARE st FROM @s;"),
        # MySQL's comments anywhere between the keywords and the literal.
        ("mysql", "CREATE USER x IDENTIFIED#c\nBY 'role-Pw-5e1d9b';"),
        ("mysql", "CREATE USER x IDENTIFIED -- c\nBY 'role-Pw-5e1d9b';"),
        ("mysql", "CREATE USER x IDENTIFIED BY#c\n'role-Pw-5e1d9b';"),
        ("mysql", "CREATE USER x IDENTIFIED BY = 'role-Pw-5e1d9b';"),
        ("mysql", "CREATE USER x IDENTIFIED BY _utf8mb4 'role-Pw-5e1d9b';"),
        ("mysql", "CREATE USER x IDENTIFIED BY PASSWORD 'role-Pw-5e1d9b';"),
        ("mysql", "/*!80000 CREATE USER x IDENTIFIED BY 'role-Pw-5e1d9b' */;"),
        # The account named any way MySQL allows, the password given any way.
        ("mysql", "SET PASSWORD FOR 'x y'@'%' = 'role-Pw-5e1d9b';"),
        ("mysql", "SET PASSWORD FOR `x y`@`%` = 'role-Pw-5e1d9b';"),
        ("mysql", "SET PASSWORD FOR /*c*/ x@'%' = 'role-Pw-5e1d9b';"),
        ("mysql", "SET PASSWORD FOR x@'%' = OLD_PASSWORD('role-Pw-5e1d9b');"),
        ("mysql", "CREATE USER x IDENTIFIED WITH 'mysql_native_password' BY 'role-Pw-5e1d9b';"),
        ("mysql", "CREATE USER x IDENTIFIED VIA ed25519 USING PASSWORD('role-Pw-5e1d9b') OR unix_socket;"),
        ("mysql", "CREATE USER 'x'@'%' IDENTIFIED BYY 'role-Pw-5e1d9b';"),
        ("mysql", "CREATE USER x IDENTIFIED BY _utf8mb4'role-Pw-5e1d9b';"),
        ("mysql", "SELECT 'a\\'b'; CREATE USER x IDENTIFIED BY \"role-Pw-5e1d9b\";"),
        # PostgreSQL's quotings and continuations.
        ("postgresql", "CREATE ROLE x LOGIN PASSWORD $é$role-Pw-5e1d9b$é$;"),
        ("postgresql", "CREATE ROLE x LOGIN PASSWORD 'role-Pw-\n5e1d9b';"),
        ("postgresql", "CREATE ROLE x LOGIN PASSWORD E'role-Pw-\\\n5e1d9b';"),
        ("postgresql", "CREATE ROLE x LOGIN PASSWORD 'role-Pw-' -- c\n'5e1d9b';"),
        ("postgresql", "CREATE ROLE x LOGIN PASSWORD 'role-Pw-'\r\n'5e1d9b';"),
        ("postgresql", "SELECT 'C:\\'; /* a /* nested */ comment */ ALTER ROLE x PASSWORD'role-Pw-5e1d9b';"),
        ("postgresql", "CREATE SUBSCRIPTION s CONNECTION 'host=h password=''role-Pw-5e1d9b''' PUBLICATION p;"),
        ("postgresql", "CREATE USER MAPPING FOR x SERVER s OPTIONS (user 'x', \"password\" 'role-Pw-5e1d9b');"),
    ],
)
def test_a_password_a_migration_writes_is_masked_wherever_it_comes_back(dialect, sql):
    """Learned as faber reads the SQL, the password is masked in the SQL however it is spelt, and
    in any text that echoes it without the keyword before it: MariaDB's syntax error quotes the
    statement from the token it failed at, a log row only the statement's end."""
    redactor = Redactor()
    # Two of them hold a line break (PostgreSQL's E'...' reads a backslash before it as nothing).
    password = "role-Pw-\n5e1d9b" if "role-Pw-\n5e1d9b" in sql.replace("\\\n", "\n") else ROLE_CANARY

    redactor.learn_sql(sql, dialect)

    for echoed in (
        sql,
        f"You have an error in your SQL syntax ... near 'BYY '{password}'' at line 1",
        json.dumps({"logs": f"near '{password}'"}),
        f"... near '{password[:9]}...' at line 1",
    ):
        shown = redactor.redact(echoed)
        assert "5e1d9b" not in shown and "role-Pw" not in shown, shown


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [
        ("mysql", "SET PASSWORD FOR 'app-user'@'db-host' = 'role-Pw-5e1d9b';"),
        ("mysql", "CREATE USER 'app-user'@'db-host' IDENTIFIED WITH 'auth_plugin' BY 'role-Pw-5e1d9b';"),
        ("mysql", "CREATE USER x IDENTIFIED VIA pam USING 'pam-service'; ALTER USER y COMMENT 'a comment';"),
        ("postgresql", "CREATE ROLE app PASSWORD 'role-Pw-5e1d9b' VALID UNTIL '2030-01-01' IN ROLE readers;"),
        ("postgresql", "ALTER TABLE users ADD COLUMN password text DEFAULT 'unset-value';"),
        ("postgresql", "INSERT INTO users (name, password) VALUES ('bob-name', 'hash-value');"),
        ("postgresql", "SELECT 'password is-a-word' AS label, \"password_hash\" FROM t WHERE x = 'other-value';"),
        ("mysql", "REPLACE INTO t VALUES ('row-value'); UPDATE t SET c = REPLACE(c, 'from-value', 'to-value');"),
    ],
)
def test_only_the_password_a_migration_writes_is_learned(dialect, sql):
    """A user's or host's name, a plugin's, another option's value and ordinary words stay in
    every output: only the literal a password keyword gives is learned."""
    assert passwords_in_sql(sql, dialect) <= {ROLE_CANARY}
    redactor = Redactor()
    redactor.learn_sql(sql, dialect)
    for word in ("app-user", "db-host", "auth_plugin", "pam-service", "2030-01-01", "unset-value", "bob-name"):
        assert redactor.redact(f"text {word} text") == f"text {word} text"


@settings(deadline=None, max_examples=300)
@given(
    password=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=3),
    quoting=st.sampled_from(["plain", "escaped", "dollar", "execute", "mysql", "mysql dynamic"]),
)
def test_every_password_text_is_learned_whole(password, quoting):
    """Whatever its characters, a password quoted as the server reads it is learned whole."""
    quoted = "'" + password.replace("'", "''") + "'"  # PostgreSQL's standard literal
    escaped = "'" + password.replace("\\", "\\\\").replace("'", "\\'") + "'"  # MySQL's, PostgreSQL's E'...'
    in_execute = quoted.replace("'", "''")
    sql, dialect = {
        "plain": (f"CREATE ROLE a PASSWORD {quoted};", "postgresql"),
        "escaped": (f"CREATE ROLE a PASSWORD E{escaped};", "postgresql"),
        "dollar": (f"CREATE ROLE a PASSWORD $pw_9${password}$pw_9$;", "postgresql"),
        "execute": (f"DO $$ BEGIN EXECUTE 'CREATE ROLE a PASSWORD {in_execute}'; END $$;", "postgresql"),
        "mysql": (f"CREATE USER 'a'@'%' IDENTIFIED BY {escaped};", "mysql"),
        "mysql dynamic": (
            "SET @s = '" + f"SET PASSWORD = {escaped}".replace("\\", "\\\\").replace("'", "\\'") + "';",
            "mysql",
        ),
    }[quoting]
    assume(quoting != "dollar" or "$pw_9" not in password)
    assume(quoting != "execute" or "$$" not in password)

    assert password in passwords_in_sql(sql, dialect)


def test_a_password_node_prints_with_its_backslashes_doubled_is_masked_whole():
    """Node's util.inspect of a text holding both kinds of quote doubles its backslashes and quotes
    it with backticks (a driver printing its options): the part after the backslash showed."""
    password = "canary-Pw\\q\"z'w"
    redactor = Redactor()
    redactor.add(f"postgresql://app:{quote(password, safe='')}@db/app")
    inspected = subprocess.run(
        ["node", "-e", "console.log(require('util').inspect(process.argv[1]))", password],
        capture_output=True,
        text=True,
        check=True,
    ).stdout

    shown = redactor.redact(f"opts {inspected}")

    assert shown.strip() == f"opts `{MASK}`", shown


def test_mysqls_word_for_whether_a_password_was_given_stays():
    redactor = Redactor()

    denied = redactor.redact("Access denied for user 'app'@'10.0.0.5' (using password: YES)")

    assert denied == "Access denied for user 'app'@'10.0.0.5' (using password: YES)"
    assert redactor.redact("password: YESMAN") == "password: ***"


def test_the_text_a_json_parser_quotes_around_a_syntax_error_is_masked_in_every_printed_form():
    """Node's JSON.parse quotes up to 21 characters of the input around the error: in an ORM
    config or package.json, often a password faber never learnt (not the URL's)."""
    messages = [
        """Unexpected token 's', ..."assword": s3cretPW}}" is not valid JSON""",
        """Unexpected token 's', "s3cretPW" is not valid JSON""",
        """Unexpected token ''', ..."ok", "x": 's3cretPW'"... is not valid JSON""",
        """Unexpected token '😀', "😀s3cretPW\\" is not valid JSON""",
        """Error parsing /app/package.json: Unexpected token 's', "{"a": s3cretPWxx"... is not valid JSON""",
    ]
    redactor = Redactor()

    for message in messages:
        document = json.dumps({"error": message})
        for printed in (message, document, json.dumps(message, ensure_ascii=False), repr(message)):
            redacted = redactor.redact(printed)
            assert "s3cr" not in redacted and "is not valid JSON" in redacted, redacted
        assert json.loads(redactor.redact(document))["error"].startswith(message.split(", ")[0])
    assert redactor.redact("The request is not valid JSON: line 1") == "The request is not valid JSON: line 1"


def test_database_keeps_prisma_schema_but_hides_it_from_libpq():
    database = Database(
        Secret("postgresql://app:pw@127.0.0.1:5432/app?schema=billing&connection_limit=5&sslmode=disable"),
        source="$URL",
    )

    assert database.schema == "billing"
    assert "schema" not in database.url.reveal() and "sslmode=disable" in database.url.reveal()
    env = database.client_env()
    assert env["PGPASSWORD"] == "pw" and env["PGDATABASE"] == "app" and env["PGSSLMODE"] == "disable"


def test_a_long_line_without_urls_is_redacted_in_one_pass_not_one_per_letter():
    # A migration's output can hold one enormous line (a data dump, a minified function). The URL
    # pattern used to be tried from every letter of a word to its end: 400,000 letters took minutes.
    import time

    line = "a" * 400_000 + " postgresql://app:Hidden-77@db/app " + "1b" * 200_000
    started = time.monotonic()
    redacted = Redactor().redact(line)

    assert time.monotonic() - started < 10  # a hang, not a speed goal: linear work takes milliseconds
    assert "Hidden-77" not in redacted and f"postgresql://app:{MASK}@db/app" in redacted


def test_a_text_redacted_before_a_secret_was_learnt_is_masked_after_it():
    redactor = Redactor()
    line = "connected to db as app with tr0ub4dor-canary"
    assert redactor.redact(line) == line  # remembered as it is, while no secret is known

    redactor.add("postgresql://app:tr0ub4dor-canary@db/app")

    assert "tr0ub4dor" not in redactor.redact(line)
    assert "tr0ub4dor" not in redactor.redact_data({"line": [line]})


def test_event_data_is_json_data_redacted_as_a_json_round_trip_gives_it():
    import datetime as dt
    import enum
    import json
    from pathlib import Path

    class Colour(str, enum.Enum):
        RED = "red hunter22"

    redactor = Redactor()
    redactor.add("postgresql://app:hunter22@db/app")
    data = {
        "name": "m1 hunter22",
        "counts": (1, 2.5, float("inf"), True, None),
        "nested": {"public.hunter22": ["x", {"y": "postgres://u:pw@h/d"}]},
        "numbered": {1: "one", 2.5: "half", None: "none", False: "no"},
        "when": dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc),
        "path": Path("/srv/hunter22.sql"),
        "colour": Colour.RED,
    }

    converted = redactor.redact_as_json(data)

    assert converted == redactor.redact_data(json.loads(json.dumps(data, default=str)))
    assert "hunter22" not in json.dumps(converted) and "pw@" not in json.dumps(converted)


def test_a_document_is_redacted_wherever_a_credential_hides_in_it():
    from faber_core.api import redacted
    from faber_core.models import AppliedMigration
    from faber_core.results import Success

    redactor = Redactor()
    redactor.add("postgresql://app:hunter22@db/app")
    clean = AppliedMigration(name="m1", duration_seconds=0.1, table_writes={"public.t": 1})
    leaky = AppliedMigration(name="m2 hunter22", duration_seconds=0.1, table_writes={"public.hunter22": 2})
    document = Success(
        operation="deploy-migrations",
        environment="prod",
        result={"migrations": [clean, leaky], "note": ("fine", "dsn password=x"), "count": 2},
        message="Deployed 2 migrations",
    )

    shown = redacted(document, redactor)

    dumped = shown.model_dump_json()
    assert "hunter22" not in dumped and "password=x" not in dumped
    assert shown.result["migrations"][0] == clean and shown.result["count"] == 2
    assert document.result["migrations"][1].name == "m2 hunter22"  # the original is left as it was


def test_the_password_variables_of_the_database_clients_are_known_from_the_start(monkeypatch):
    monkeypatch.setenv("PGPASSWORD", "pg-env-secret")
    monkeypatch.setenv("MYSQL_PWD", "my-env-secret")

    text = Redactor().redact('invalid input syntax: "pg-env-secret", Access denied (my-env-secret)')

    assert "env-secret" not in text


def test_no_json_syntax_error_node_reports_in_a_config_shows_four_characters_of_its_password():
    """Configs with a password and a typical mistake near it (unquoted, single-quoted, a missing or
    extra comma, a stray word), parsed by Node's own JSON.parse: its redacted message keeps no
    piece of the password that the redactor's minimum length would mask."""
    node = shutil.which("node")
    if node is None:
        pytest.skip("Node.js is not installed")
    generate = random.Random(7)
    alphabet = string.ascii_letters + string.digits + "!#$%&()*+,-./:;<=>?@[]^_{|}~ "
    mistakes = [
        '"password": {pw}',
        "\"password\": '{pw}'",
        '"password": "{pw}" "host": "db"',
        '"password": "{pw}",, "host": "db"',
        '"password": "{pw}", "host": db',
        '"password": "{pw}", }',
        '"pass": "x", {pw}',
        '"password": "{pw}"}} extra',
    ]
    cases = []
    for _ in range(400):
        password = "".join(generate.choice(alphabet) for _ in range(generate.randint(8, 30)))
        inner = generate.choice(mistakes).replace("{pw}", password)
        prefix = generate.choice(["", '"username": "app", ', '"a": 1, "username": "application_user", '])
        cases.append((password, '{"production": {' + prefix + inner + "}}"))
    script = (
        "const texts = JSON.parse(require('fs').readFileSync(0, 'utf8'));\n"
        "const message = (t) => { try { JSON.parse(t); return ''; } catch (e) { return e.message; } };\n"
        "console.log(JSON.stringify(texts.map(message)));"
    )
    messages = json.loads(
        subprocess.run(
            [node, "-e", script],
            input=json.dumps([text for _, text in cases]),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    redactor = Redactor()

    quoting = 0
    for (password, text), message in zip(cases, messages, strict=True):
        assert message, text
        quoting += " is not valid JSON" in message
        redacted = redactor.redact(message)
        pieces = {password[i : i + 4] for i in range(len(password) - 3)}
        assert not [piece for piece in pieces if piece.strip() == piece and piece in redacted], (message, redacted)
    assert quoting > 100


def test_a_password_piece_is_masked_where_it_stands_as_a_whole():
    """Parsers cut a password at its delimiters and print the pieces between quotes or those
    delimiters; the same digits inside a longer word (an id, a timestamped name) are not it."""
    redactor = Redactor()
    redactor.add("postgresql://app:Winter%402026@db/app")

    assert redactor.redact('could not translate host name "2026@db"') == 'could not translate host name "***@db"'
    assert redactor.redact("user app:2026 x%252026") == "user app:*** x%25***"
    named = "backup-20261128-100050 20261128000000_users"
    assert redactor.redact(named) == named
    assert redactor.redact("Winter@2026 pwWinter@2026x") == "*** pw***x"  # the whole password, wherever it stands


def test_the_start_of_a_password_that_a_printer_cut_off_is_masked():
    # MySQL's "near '...'" quotes 80 characters of the statement and adds "..."; PostgreSQL keeps a
    # session's query to 1 kB: a password cut there is in no form the redactor knew, and its first
    # characters showed.
    password = "Zq8canaryPASSWORDx91longpart"
    redactor = Redactor()
    redactor.add(f"mysql://app:{password}@db:3306/app")

    cut_by_mysql = f"You have an error in your SQL syntax near 'dual WHERE x = '{password[:15]}...' at line 1"
    cut_at_the_end = f"UPDATE users SET note = '{password[:14]}"
    in_json = json.dumps({"error": cut_by_mysql})

    assert (
        redactor.redact(cut_by_mysql) == "You have an error in your SQL syntax near 'dual WHERE x = '***...' at line 1"
    )
    assert redactor.redact(cut_at_the_end) == "UPDATE users SET note = '***"
    assert password[:6] not in redactor.redact(in_json) and json.loads(redactor.redact(in_json))
    assert redactor.redact(f"{password[:9]}\u2026 and more") == "***\u2026 and more"


def test_a_cut_password_is_masked_only_where_it_was_cut():
    redactor = Redactor()
    redactor.add("postgresql://app:production-Pw-41@db/app")

    # The whole text, a word running on, or a start too short to say much: not a cut password.
    for text in ["production", "production-Pw", "reproduction...", "a prod...", "the productio and more"]:
        assert redactor.redact(text) == text
    assert redactor.redact("environment production-P...") == "environment ***..."


def test_a_password_a_migration_writes_is_masked_as_a_word_not_inside_longer_words():
    # Masked wherever it stood, a password such as "app" made recovery advice unreadable
    # ("faber resolve staging --***lied 002_***_setup"), and the history kept it so.
    redactor = Redactor()
    redactor.learn_sql("CREATE ROLE reporting LOGIN PASSWORD 'app';", "postgresql")

    advice = "faber resolve staging --applied 002_app_setup"
    assert redactor.redact(advice) == advice
    assert redactor.redact("syntax error near 'BY 'app'' at line 1") == "syntax error near 'BY '***'' at line 1"


def test_a_data_migration_over_the_limit_is_not_read_for_passwords(monkeypatch):
    # Read on every command, tens of megabytes of data took seconds to minutes to read.
    from faber_core import secrets, sql_passwords

    def never(sql, dialect):
        raise AssertionError("a data migration over the limit was read for passwords")

    monkeypatch.setattr(sql_passwords, "passwords_in_sql", never)
    data = "INSERT INTO notes VALUES ('identified by the password on file');\n" * (
        secrets.MAX_SQL_READ_FOR_PASSWORDS // 60 + 1
    )

    Redactor().learn_sql(data, "postgresql")
