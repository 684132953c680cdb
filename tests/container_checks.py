"""What the container checks share: the repository root, the three services and their settings.

tests/unit/test_dockerfiles.py, test_compose.py and test_edge.py read the Dockerfile,
compose.yaml, .env.example and services/edge/Caddyfile as files and compare them with these.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from signaling_shared.settings import AuthSettings, CommonSettings, RelaySettings, RoomsSettings

ROOT = Path(__file__).resolve().parents[1]
SETTINGS: tuple[type[CommonSettings], ...] = (AuthSettings, RoomsSettings, RelaySettings)
SECRET_NAME = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|KEY|CREDENTIAL", re.IGNORECASE)


@dataclass(frozen=True)
class Service:
    name: str
    package: str
    settings: type[CommonSettings]

    @property
    def port(self) -> int:
        return int(self.settings.model_fields["port"].default)

    @property
    def upstream(self) -> str:
        return f"{self.name}:{self.port}"

    @property
    def dockerfile(self) -> Path:
        """One Dockerfile builds the three images; build_args say which."""
        return ROOT / "services" / "Dockerfile"

    @property
    def build_args(self) -> dict[str, str]:
        """What every build of this service's image passes: its package and its port."""
        return {"SERVICE": self.package, "PORT": str(self.port)}


AUTH = Service("auth-api", "auth_api", AuthSettings)
ROOMS = Service("rooms-api", "rooms_api", RoomsSettings)
RELAY = Service("ws-relay", "ws_relay", RelaySettings)
SERVICES = (AUTH, ROOMS, RELAY)


def env_name(field_name: str) -> str:
    return f"SIGNALING_{field_name.upper()}"


SETTING_NAMES = frozenset(env_name(name) for cls in SETTINGS for name in cls.model_fields)
