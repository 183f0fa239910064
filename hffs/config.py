"""Where hffs keeps things, and its saved settings.

The working directory (``HFFS_HOME``, else what ``hffs conf cache set`` saved, else
the platform's data dir) holds config, daemon state, logs and partial downloads.
Models go to huggingface_hub's own cache, so every HF tool sees them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from hffs.errors import HffsError
from swarm.files import atomic_write
from swarm.hostport import format_hostport, parse_host, parse_port

DEFAULT_PORT = 9009
# Tried in this order when the user configured none. The mirror is a third party: it never
# gets the user's token (``named_endpoints``, ``hffs.trust.may_send_token``).
DEFAULT_ENDPOINTS = ("https://hf-mirror.com", "https://huggingface.co")
ZERO_COMMIT = "0" * 40


class ConfigError(HffsError):
    """A setting is missing or malformed."""


def _pointer_file() -> Path:
    """The one fixed place that remembers a home set with ``conf cache set``."""
    return Path(platformdirs.user_config_dir("hffs")) / "home"


def default_home() -> Path:
    return Path(platformdirs.user_data_dir("hffs"))


def saved_home() -> Path | None:
    try:
        text = _pointer_file().read_text().strip()
    except FileNotFoundError:
        return None
    return Path(text) if text else None


def home_dir() -> Path:
    """The working directory in force: env, else the saved one, else the default."""
    env = os.environ.get("HFFS_HOME")
    if env:
        return Path(env).expanduser().resolve()
    return saved_home() or default_home()


def set_home(path: Path) -> Path:
    path = path.expanduser().resolve()
    if not path.is_dir():
        raise ConfigError(f"{path} is not an existing directory")
    pointer = _pointer_file()
    pointer.parent.mkdir(parents=True, exist_ok=True)
    pointer.write_text(str(path))
    return path


def reset_home() -> None:
    _pointer_file().unlink(missing_ok=True)


def hub_cache_dir() -> Path:
    """huggingface_hub's cache, by the same rule it uses (read at call time)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it: no upstream at all, peers only."""
    return os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")


# Every variable huggingface_hub's get_token reads besides HF_HOME and XDG_CACHE_HOME.
_TOKEN_ENV = (
    "HF_TOKEN",
    "HUGGING_FACE_HUB_TOKEN",
    "HF_OIDC_RESOURCE",
    "HF_TOKEN_PATH",
    "HUGGINGFACE_CO_STAGING",
)


def _expand(path: str) -> str:
    return os.path.expandvars(os.path.expanduser(path))


def _surely_no_token() -> bool:
    """True only where huggingface_hub's get_token would find no token either: none of
    its variables set, no token file where it looks, not in IPython (Colab's secrets).
    Importing huggingface_hub costs the CLI ~140 ms: without a token there is no need."""
    import builtins

    if any(name in os.environ for name in _TOKEN_ENV) or hasattr(builtins, "get_ipython"):
        return False
    cache = os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache"))
    hf_home = _expand(os.getenv("HF_HOME", os.path.join(cache, "huggingface")))
    try:
        os.stat(_expand(os.path.join(hf_home, "token")))  # its HF_TOKEN_PATH
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return False


def hf_token() -> str | None:
    """The token for upstream endpoints only; never sent to peers."""
    token = os.environ.get("HF_TOKEN")
    if token:
        return token
    if _surely_no_token():
        return None
    from huggingface_hub import get_token  # reads the token file `hf auth login` wrote

    return get_token()


def _secret(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError("swarm_secret must be a string")
    return value or None


@dataclass(frozen=True)
class Peer:
    host: str
    port: int = DEFAULT_PORT

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


@dataclass
class Config:
    """The saved settings in ``<home>/config.json``."""

    home: Path
    peers: list[Peer] = field(default_factory=list)
    endpoints: list[str] = field(default_factory=list)  # empty: the defaults
    port: int = DEFAULT_PORT
    max_upload_rate: int = 0  # bytes/s, 0 = unlimited
    max_uploads: int = 32
    swarm_secret: str | None = None

    @property
    def path(self) -> Path:
        return self.home / "config.json"

    @property
    def partial_dir(self) -> Path:
        return self.home / "partial"

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @classmethod
    def load(cls, home: Path | None = None) -> Config:
        home = home or home_dir()
        path = home / "config.json"
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            return cls(home)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        try:
            return cls(
                home,
                peers=[
                    Peer(parse_host(p["host"]), parse_port(p["port"])) for p in raw.get("peers", [])
                ],
                endpoints=[str(e) for e in raw.get("endpoints", [])],
                port=int(raw.get("port", DEFAULT_PORT)),
                max_upload_rate=int(raw.get("max_upload_rate", 0)),
                max_uploads=int(raw.get("max_uploads", 32)),
                swarm_secret=_secret(raw.get("swarm_secret")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{path} is malformed ({exc}); fix or delete it") from exc

    def save(self) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        data = {
            "peers": [{"host": p.host, "port": p.port} for p in self.peers],
            "endpoints": self.endpoints,
            "port": self.port,
            "max_upload_rate": self.max_upload_rate,
            "max_uploads": self.max_uploads,
            "swarm_secret": self.swarm_secret,
        }
        # owner-only: the file may hold the swarm secret
        atomic_write(self.path, json.dumps(data, indent=2), private=True)

    def upstream_endpoints(self) -> list[str]:
        """Upstream endpoints in the order to try: HF_ENDPOINT first, then the rest.

        ``HFFS_ENDPOINTS`` (comma separated) replaces the whole list."""
        env_list = os.environ.get("HFFS_ENDPOINTS")
        if env_list:
            return [e.strip().rstrip("/") for e in env_list.split(",") if e.strip()]
        base = list(self.endpoints) or list(DEFAULT_ENDPOINTS)
        first = os.environ.get("HF_ENDPOINT")
        if first:
            base.insert(0, first)
        out: list[str] = []
        for e in base:
            e = e.rstrip("/")
            if e not in out:
                out.append(e)
        return out

    def named_endpoints(self) -> list[str]:
        """The endpoints the user chose (``HFFS_ENDPOINTS``, ``HF_ENDPOINT``, config.json):
        with huggingface.co itself, the only ones an HF token is sent to."""
        env_list = os.environ.get("HFFS_ENDPOINTS", "")
        named = [e.strip() for e in env_list.split(",") if e.strip()]
        named += list(self.endpoints)
        if os.environ.get("HF_ENDPOINT"):
            named.append(os.environ["HF_ENDPOINT"])
        return list(dict.fromkeys(e.rstrip("/") for e in named))
