"""Settings, read from TOML into frozen dataclasses. ``Settings.demo()`` is the offline demo.

A config file looks like ``config/live.example.toml``; every key has a default, so a
file only says what differs. Unknown keys are errors, so a typo never goes unnoticed.

Every setting of a section can also be given as an environment variable
``MARKETCAST_<SECTION>__<KEY>`` (``MARKETCAST_SERVER__PORT=9000``,
``MARKETCAST_SERVER__LIMITS__MAX_CONNECTIONS=5000``, ``MARKETCAST_AUTH__SECRET=...``),
which wins over the file; the value is a TOML value (``true``, ``5.0``) or, for a text
setting, the text as it is. ``[[venues]]`` are only read from the file.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from app.exceptions import ConfigError
from app.venues import VENUE_KINDS, native_symbols
from bus.credentials import BusCredentials, redact_url, url_has_credentials
from bus.exceptions import SubjectError
from bus.subjects import Subjects
from publish.client import ServerLimits
from publish.profit import MARKS_PER_TICK

STORAGE_BACKENDS = ("sqlite", "postgres")
ROLES = ("all", "ingest", "edge", "positions")
"""``[node].role``: ``all`` (one process, the default), ``ingest`` (feeds -> bus),
``edge`` (bus -> clients), ``positions`` (position ops and profit; not served yet)."""
BUS_SCHEMES = ("nats://", "tls://", "ws://", "wss://")
DEFAULT_BUS_URL = "nats://127.0.0.1:4222"
DEMO_VENUES: dict[str, tuple[str, ...]] = {
    "binance": ("BTC-USDT", "ETH-USDT", "SOL-USDT"),
    "okx": ("BTC-USDT", "ETH-USDT"),
    "bybit": ("BTC-USDT", "ETH-USDT"),
    "coinbase": ("BTC-USD", "ETH-USD"),
    "kraken": ("BTC-USD", "ETH-USD"),
}
"""The offline demo's simulated venues and symbols (BTC-USDT and BTC-USD on several
venues, so the consolidated best bid/ask has something to consolidate)."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8765
    limits: ServerLimits = field(default_factory=ServerLimits)


@dataclass(frozen=True, slots=True)
class StorageSettings:
    backend: str = "sqlite"
    """``sqlite`` (embedded, the file at ``path``) or ``postgres`` (``dsn``, ``schema``)."""
    path: str = "./marketcast.db"
    window_ms: float = 5.0
    max_pending_rows: int = 200_000
    dsn: str = ""
    """PostgreSQL connection string, e.g. ``postgresql://marketcast@db.internal/marketcast``."""
    schema: str = "public"
    """The PostgreSQL schema holding the tables (created with them when missing)."""
    timeout_ms: float = 5_000.0
    """A PostgreSQL operation taking longer fails (the flusher retries it)."""
    retain_bbo_hours: float = 168.0
    """BBO rows and feed events older than this are deleted, in small steps between
    flushes (fractions allowed; 0 keeps everything). Positions are always kept."""


@dataclass(frozen=True, slots=True)
class PositionSettings:
    ack_timeout_ms: float = 5_000.0
    """A position change the database has not confirmed by then is answered
    ``storage_unavailable`` (it stays queued and is stored when the database answers)."""
    max_per_account: int = 10_000
    """Open positions one account may hold."""
    profit_marks_per_tick: int = MARKS_PER_TICK
    """Positions the profit engine marks per publish tick at most (whole instruments,
    oldest price change first; the rest in the next loop iteration)."""


@dataclass(frozen=True, slots=True)
class BookSettings:
    capture_depth: int = 25
    """Levels per side copied into every snapshot (the deepest ``book`` subscription)."""


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """Connection auth: HMAC-signed tokens (``marketcast token --account A``)."""

    secret: str | None = field(default=None, repr=False)
    """The token signing secret (at least 16 bytes); unset: read from ``secret_file``."""
    secret_file: str | None = None
    """Where the secret is kept when ``secret`` is unset; created (0600, random) if missing.
    Unset: ``marketcast.secret`` in the directory of ``[storage].path``."""
    market_data_requires_auth: bool = False
    """When true, market-data channels need an ``auth`` first, and HTTP market data a
    bearer token; positions/profit always do."""
    operator_requires_auth: bool = False
    """When true, /dashboard, /stats and /metrics need a token with the operator role
    (``marketcast token --operator``); /health stays open for load balancers."""
    allow_shared_secret_file: bool = False
    """Accept (with a warning) a secret file that group or others may read; else refused."""
    token_ttl_seconds: float = 86_400.0
    """How long the tokens ``marketcast token`` issues are valid."""


@dataclass(frozen=True, slots=True)
class SimulatorSettings:
    updates_per_second: float = 20.0
    """Book updates per second per simulated symbol."""
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class NodeSettings:
    role: str = "all"
    """One of ``ROLES``; ``marketcast run --role`` overrides it."""


@dataclass(frozen=True, slots=True)
class BusSettings:
    """The NATS bus between ingest and edges (roles other than ``all``)."""

    url: str | list[str] = ""
    """A NATS server, or a list of the servers of one NATS cluster; ``--bus`` overrides.
    Unset: ``DEFAULT_BUS_URL``, and ``marketcast cluster`` starts a nats-server of its own."""
    prefix: str = "marketcast"
    """First token of every subject: clusters sharing a NATS keep apart by it."""
    stale_after_ms: float = 2000.0
    """Edge: no bus data from an instrument's ingest this long -> the instrument is stale."""
    shards: int = 1
    """Positions shards in the cluster."""
    shard: int = 0
    """``role = "positions"``: which shard this node is (0 .. shards - 1)."""
    user: str = ""
    """NATS user name (with ``password``)."""
    password: str = field(default="", repr=False)
    """NATS password of ``user`` (a secret: prefer ``MARKETCAST_BUS__PASSWORD``)."""
    token: str = field(default="", repr=False)
    """NATS authentication token (a secret: prefer ``MARKETCAST_BUS__TOKEN``)."""
    creds_file: str = ""
    """A NATS ``.creds`` file (user JWT and nkey seed, as ``nsc`` writes it)."""
    tls_ca_file: str = ""
    """TLS to NATS, trusting the CA certificates of this PEM file (``tls://`` URLs
    without it trust the system's CAs)."""
    tls_cert_file: str = ""
    """A client certificate (PEM) for NATS servers that verify clients, with ``tls_key_file``."""
    tls_key_file: str = ""
    """The private key (PEM) of ``tls_cert_file``."""

    @property
    def servers(self) -> tuple[str, ...]:
        if isinstance(self.url, str):
            return (self.url or DEFAULT_BUS_URL,)
        return tuple(self.url)

    @property
    def credentials(self) -> BusCredentials:
        """How a node logs in to the bus (passed to every connect)."""
        return BusCredentials(
            user=self.user,
            password=self.password,
            token=self.token,
            creds_file=self.creds_file,
            tls_ca_file=self.tls_ca_file,
            tls_cert_file=self.tls_cert_file,
            tls_key_file=self.tls_key_file,
        )


@dataclass(frozen=True, slots=True)
class VenueSettings:
    """One venue connection.

    ``symbols`` maps canonical symbols to the venue's own (``{"BTC-USDT": "BTCUSDT"}``);
    a list of canonical symbols uses the venue's usual spelling, and its entries with
    ``*``/``?`` (``"*-USDT"`` or ``"binance:*-USDT"``) are ``patterns``: every trading
    instrument of the venue's metadata that matches, at most ``max_instruments`` in all.
    ``simulate`` runs the built-in simulator of this venue on loopback and connects to
    it instead.
    """

    id: str
    symbols: dict[str, str]
    kind: str = ""
    simulate: bool = False
    ws_url: str | None = None
    rest_url: str | None = None
    instrument_silence_seconds: float = 0.0
    """Longest a live instrument may send no book message before it is resynced (0: no
    bound; thresholds learned from each instrument's update rate apply either way)."""
    max_instruments: int = 500
    """Most instruments the venue may carry (what patterns select counts)."""
    metadata_refresh_seconds: float = 3600.0
    """How often the venue's instrument metadata is fetched again while running (halted,
    resumed and newly listed instruments followed; ``app.refresh``); 0: never."""
    channel: str = ""
    """The venue's book channel when it has several (OKX: ``books``, ``books5``,
    ``books-l2-tbt``, ``books50-l2-tbt``, ``bbo-tbt``); empty: the venue's default."""
    credentials_env: str = ""
    """Prefix of the environment variables holding the venue's API key for a logged-in
    connection (OKX: ``<PREFIX>_API_KEY``, ``_API_SECRET``, ``_API_PASSPHRASE``)."""
    patterns: tuple[str, ...] = ()
    """Patterns given in ``symbols`` (or as ``patterns = [..]``), without the venue id."""

    @property
    def adapter_kind(self) -> str:
        return self.kind or self.id


@dataclass(frozen=True, slots=True)
class Settings:
    server: ServerSettings = field(default_factory=ServerSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    book: BookSettings = field(default_factory=BookSettings)
    simulator: SimulatorSettings = field(default_factory=SimulatorSettings)
    venues: tuple[VenueSettings, ...] = ()
    auth: AuthSettings = field(default_factory=AuthSettings)
    positions: PositionSettings = field(default_factory=PositionSettings)
    node: NodeSettings = field(default_factory=NodeSettings)
    bus: BusSettings = field(default_factory=BusSettings)

    @classmethod
    def demo(cls) -> Settings:
        """The offline demo: simulated venues on loopback, SQLite, 127.0.0.1:8765."""
        return cls(
            venues=tuple(
                VenueSettings(id=venue, symbols=native_symbols(venue, symbols), simulate=True)
                for venue, symbols in DEMO_VENUES.items()
            )
        )

    def with_port(self, port: int) -> Settings:
        return replace(self, server=replace(self.server, port=port))

    def with_role(self, role: str) -> Settings:
        """``--role``: an edge drops ``[[venues]]`` (one config file serves every role)."""
        if role not in ROLES:
            raise ConfigError(f"--role must be one of {', '.join(ROLES)}, got {role!r}")
        venues = () if role == "edge" else self.venues
        settings = replace(self, node=NodeSettings(role=role), venues=venues)
        _validate_node(settings)
        return settings

    def with_bus(self, url: str) -> Settings:
        """``--bus``: one URL, or several separated by commas (one NATS cluster)."""
        servers = [part.strip() for part in url.split(",") if part.strip()]
        settings = replace(
            self, bus=replace(self.bus, url=servers[0] if len(servers) == 1 else servers)
        )
        _validate_bus(settings.bus, "--bus")
        return settings

    def with_storage_path(self, path: str) -> Settings:
        return replace(self, storage=replace(self.storage, path=path))

    @property
    def secret_path(self) -> Path:
        """Where the token secret is kept when ``[auth].secret`` is unset."""
        if self.auth.secret_file is not None:
            return Path(self.auth.secret_file)
        return Path(self.storage.path).parent / "marketcast.secret"


ENV_PREFIX = "MARKETCAST_"
ENV_SEPARATOR = "__"


def read_settings(config: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """What a command runs with: the config file (none: the offline demo), then the
    ``MARKETCAST_<SECTION>__<KEY>`` variables of ``environ`` (default: the process's)."""
    settings = load_settings(config) if config else Settings.demo()
    return with_environment(settings, os.environ if environ is None else environ)


def with_environment(settings: Settings, environ: Mapping[str, str]) -> Settings:
    """``settings`` with every ``MARKETCAST_<SECTION>__<KEY>`` of ``environ`` applied and
    validated like a file; an unknown section or key is a ``ConfigError`` naming it."""
    overrides = {
        name: value
        for name, value in environ.items()
        if name.startswith(ENV_PREFIX) and ENV_SEPARATOR in name
    }
    if not overrides:
        return settings
    document = settings_document(settings)
    for name, raw in sorted(overrides.items()):
        *path, key = name.removeprefix(ENV_PREFIX).lower().split(ENV_SEPARATOR)
        if not path or not all(path):
            raise ConfigError(f"{name}: a setting is MARKETCAST_<SECTION>__<KEY>")
        table, section = document, Settings
        for part in path:
            section_type = _section_type(section, part)
            if section_type is None or not isinstance(table.get(part), dict):
                raise ConfigError(f"{name}: no settings section [{'.'.join(path)}]")
            table, section = table[part], section_type
        hints = typing.get_type_hints(section)
        if key not in hints or _section_type(section, key) is not None:
            raise ConfigError(f"{name}: [{'.'.join(path)}] has no setting {key!r}")
        table[key] = _env_value(name, raw, hints[key])
    try:
        return settings_from_dict(document)
    except ConfigError as exc:
        raise ConfigError(f"environment: {exc}") from exc


def settings_document(settings: Settings) -> dict[str, Any]:
    """``settings`` as the TOML document that loads back into them."""
    document = dataclasses.asdict(settings)
    document["venues"] = [
        {**venue, "symbols": dict(venue["symbols"])} for venue in document["venues"]
    ]
    return document


def _section_type(parent: type[Any], name: str) -> type[Any] | None:
    """The dataclass of ``parent``'s section ``name`` (``None``: not a section)."""
    hint = typing.get_type_hints(parent).get(name)
    return hint if isinstance(hint, type) and dataclasses.is_dataclass(hint) else None


def _env_value(name: str, raw: str, hint: Any) -> Any:
    """Text settings take the text as it is; any other a TOML value."""
    if hint is str or hint == (str | None):
        return raw
    try:
        return tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        if str in typing.get_args(hint):  # [bus].url: a URL as it is, or a TOML list
            return raw
        raise ConfigError(f"{name}: {raw!r} is not a TOML value") from None


def load_settings(path: str | Path) -> Settings:
    """Read and validate a TOML config file."""
    path = Path(path)
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from exc
    try:
        return settings_from_dict(document)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def settings_from_dict(document: dict[str, Any]) -> Settings:
    _only_keys(
        "top level",
        document,
        {"server", "storage", "book", "simulator", "venues", "auth", "positions", "node", "bus"},
    )
    venues_raw = document.get("venues", [])
    if not isinstance(venues_raw, list):
        raise ConfigError("'venues' must be an array of tables ([[venues]])")
    server_raw = dict(document.get("server", {}))
    limits = _section(ServerLimits, "server.limits", server_raw.pop("limits", {}))
    settings = Settings(
        server=replace(_section(ServerSettings, "server", server_raw), limits=limits),
        storage=_section(StorageSettings, "storage", document.get("storage", {})),
        book=_section(BookSettings, "book", document.get("book", {})),
        simulator=_section(SimulatorSettings, "simulator", document.get("simulator", {})),
        venues=tuple(_venue(index, raw) for index, raw in enumerate(venues_raw)),
        auth=_section(AuthSettings, "auth", document.get("auth", {})),
        positions=_section(PositionSettings, "positions", document.get("positions", {})),
        node=_section(NodeSettings, "node", document.get("node", {})),
        bus=_section(BusSettings, "bus", document.get("bus", {})),
    )
    _validate(settings)
    return settings


def _venue(index: int, raw: Any) -> VenueSettings:
    where = f"venues[{index}]"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a table")
    _only_keys(where, raw, {f.name for f in fields(VenueSettings)})
    if "id" not in raw or not isinstance(raw["id"], str):
        raise ConfigError(f"{where}.id is required (a venue id such as 'binance')")
    kind = raw.get("kind", "") or raw["id"]
    if kind not in VENUE_KINDS:
        known = ", ".join(VENUE_KINDS)
        raise ConfigError(f"{where}: unknown venue kind {kind!r}; known: {known}")
    symbols = raw.get("symbols")
    patterns = raw.get("patterns", [])
    if not (isinstance(patterns, list | tuple) and all(isinstance(p, str) for p in patterns)):
        raise ConfigError(f"{where}.patterns must be a list of patterns such as '*-USDT'")
    if isinstance(symbols, list) and all(isinstance(s, str) for s in symbols) and symbols:
        patterns = [*patterns, *(symbol for symbol in symbols if _is_pattern(symbol))]
        mapping = native_symbols(kind, [s for s in symbols if not _is_pattern(s)])
    elif (
        isinstance(symbols, dict)
        and (symbols or patterns)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in symbols.items())
    ):
        mapping = dict(symbols)
    else:
        raise ConfigError(
            f"{where}.symbols must be a non-empty list of canonical symbols or patterns "
            "or a table of canonical = venue symbol"
        )
    selected = tuple(pattern.removeprefix(f"{raw['id']}:") for pattern in patterns)
    venue: VenueSettings = _build(
        VenueSettings, where, {**raw, "symbols": mapping, "patterns": selected}
    )
    if venue.max_instruments < 1:
        raise ConfigError(f"{where}.max_instruments must be at least 1")
    if venue.metadata_refresh_seconds < 0:
        raise ConfigError(f"{where}.metadata_refresh_seconds must be 0 (never) or positive")
    channels = VENUE_KINDS[kind].channels
    if venue.channel and venue.channel not in channels:
        choices = ", ".join(channels) or f"none: {kind} has one book channel"
        raise ConfigError(f"{where}.channel {venue.channel!r} is not one of {choices}")
    return venue


def _is_pattern(symbol: str) -> bool:
    return "*" in symbol or "?" in symbol


def _section(cls: type[Any], name: str, raw: Any) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"[{name}] must be a table")
    _only_keys(f"[{name}]", raw, {f.name for f in fields(cls)})
    try:
        return _build(cls, f"[{name}]", raw)
    except ValueError as exc:  # the section's own validation (__post_init__)
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"[{name}]: {exc}") from exc


def _build(cls: type[Any], where: str, values: dict[str, Any]) -> Any:
    defaults = cls.__dataclass_fields__
    for key, value in values.items():
        expected = defaults[key].type
        if not _type_matches(value, str(expected)):
            shown = repr(value) if defaults[key].repr else f"a {type(value).__name__}"
            raise ConfigError(f"{where}.{key} must be {expected}, got {shown}")
    return cls(**values)


def _type_matches(value: Any, expected: str) -> bool:
    checks: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "int": (int,),
        "float": (int, float),
        "bool": (bool,),
        "dict[str, str]": (dict,),
        "list[str]": (list,),
    }
    options = [part.strip() for part in expected.split("|")]
    if value is None:
        return "None" in options
    if isinstance(value, bool) and "bool" not in options:
        return False
    return any(isinstance(value, checks.get(option, (object,))) for option in options)


def _only_keys(where: str, raw: dict[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(unknown)}")


def _validate(settings: Settings) -> None:
    if not 0 <= settings.server.port <= 65535:
        raise ConfigError(f"[server].port must be 0..65535, got {settings.server.port}")
    storage = settings.storage
    if storage.backend not in STORAGE_BACKENDS:
        raise ConfigError(
            f"[storage].backend must be one of {', '.join(STORAGE_BACKENDS)}, "
            f"got {storage.backend!r}"
        )
    if storage.backend == "postgres" and not storage.dsn:
        raise ConfigError("[storage].dsn is required with backend = 'postgres'")
    if not storage.schema:
        raise ConfigError("[storage].schema must not be empty")
    if storage.timeout_ms <= 0:
        raise ConfigError("[storage].timeout_ms must be positive")
    if storage.retain_bbo_hours < 0:
        raise ConfigError("[storage].retain_bbo_hours must be 0 (keep everything) or more")
    if settings.positions.ack_timeout_ms <= 0:
        raise ConfigError("[positions].ack_timeout_ms must be positive")
    if settings.positions.max_per_account < 1:
        raise ConfigError("[positions].max_per_account must be at least 1")
    if settings.positions.profit_marks_per_tick < 1:
        raise ConfigError("[positions].profit_marks_per_tick must be at least 1")
    if settings.storage.window_ms <= 0:
        raise ConfigError("[storage].window_ms must be positive")
    if settings.book.capture_depth < 0:
        raise ConfigError("[book].capture_depth must be >= 0")
    if settings.simulator.updates_per_second <= 0:
        raise ConfigError("[simulator].updates_per_second must be positive")
    if settings.auth.secret is not None and len(settings.auth.secret.encode()) < 16:
        raise ConfigError("[auth].secret must be at least 16 bytes")
    if settings.auth.token_ttl_seconds <= 0:
        raise ConfigError("[auth].token_ttl_seconds must be positive")
    _validate_node(settings)
    ids = [venue.id for venue in settings.venues]
    if len(ids) != len(set(ids)):
        raise ConfigError(f"venue ids must be unique, got {ids}")


def _validate_node(settings: Settings) -> None:
    role = settings.node.role
    if role not in ROLES:
        raise ConfigError(f"[node].role must be one of {', '.join(ROLES)}, got {role!r}")
    _validate_bus(settings.bus, "[bus].url")
    if role == "edge" and settings.venues:
        raise ConfigError(
            "[[venues]] is set but [node].role = 'edge' has no feeds (an edge learns its "
            "instruments from the bus): remove [[venues]] or use role 'ingest' or 'all'"
        )
    if role == "ingest" and not settings.venues:
        raise ConfigError("[node].role = 'ingest' needs at least one [[venues]]")


def _validate_bus(bus: BusSettings, where: str) -> None:
    servers = bus.servers
    if not servers or not all(isinstance(url, str) and url for url in servers):
        raise ConfigError(f"{where} must be a NATS URL or a non-empty list of them")
    for url in servers:
        if not url.startswith(BUS_SCHEMES):
            raise ConfigError(f"{where} must look like nats://host:port, got {redact_url(url)!r}")
    try:
        Subjects(bus.prefix)
    except SubjectError as exc:
        raise ConfigError(f"[bus].prefix: {exc}") from exc
    if bus.stale_after_ms <= 0:
        raise ConfigError("[bus].stale_after_ms must be positive")
    if bus.shards < 1:
        raise ConfigError("[bus].shards must be at least 1")
    if not 0 <= bus.shard < bus.shards:
        raise ConfigError(
            f"[bus].shard must be 0..{bus.shards - 1} ([bus].shards - 1), got {bus.shard}"
        )
    _validate_bus_login(bus, where)


def _validate_bus_login(bus: BusSettings, where: str) -> None:
    """One way to log in, each complete; TLS client certificate and key together."""
    if bus.password and not bus.user:
        raise ConfigError("[bus].password is set without [bus].user")
    if bus.user and not bus.password:
        raise ConfigError("[bus].user needs [bus].password")
    ways = [
        key
        for key, value in (
            ("[bus].user", bus.user),
            ("[bus].token", bus.token),
            ("[bus].creds_file", bus.creds_file),
        )
        if value
    ]
    if len(ways) > 1:
        raise ConfigError(f"{' and '.join(ways)} are different ways to log in to NATS: set one")
    if ways and any(url_has_credentials(url) for url in bus.servers):
        raise ConfigError(
            f"{where} carries credentials (user@ or user:password@) and {ways[0]} is set: "
            "give them once"
        )
    if bool(bus.tls_cert_file) != bool(bus.tls_key_file):
        missing = "[bus].tls_key_file" if bus.tls_cert_file else "[bus].tls_cert_file"
        raise ConfigError(
            f"[bus].tls_cert_file and [bus].tls_key_file go together: {missing} is not set"
        )
