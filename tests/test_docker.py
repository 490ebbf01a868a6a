"""The Docker stack, checked where Docker cannot run: the compose file against the Compose Specification's JSON
schema (compose-go v2.16.2's, the reference implementation; scripts/test-setup.sh fetches it from the Go module
proxy), and the start-up order that makes `up --wait` come up."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / ".venv" / "share" / "compose-spec" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose():
    import yaml

    return yaml.safe_load((ROOT / "docker" / "docker-compose.yml").read_text())


def test_compose_file_is_valid_against_the_compose_specification(compose):
    import copy
    import json

    from jsonschema import validators

    assert SCHEMA.exists(), "scripts/test-setup.sh fetches the schema (go mod download compose-spec/compose-go)"
    schema = json.loads(SCHEMA.read_text())
    validator = validators.validator_for(schema)(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, "; ".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)
    broken = copy.deepcopy(compose)
    broken["services"]["kibana"]["healtcheck"] = broken["services"]["kibana"].pop("healthcheck")  # a typo is caught
    assert list(validator.iter_errors(broken))


def test_services_start_in_an_order_that_comes_up(compose):
    s = compose["services"]
    assert s["kibana-password"]["depends_on"]["elasticsearch"]["condition"] == "service_healthy"
    assert s["kibana"]["depends_on"]["kibana-password"]["condition"] == "service_completed_successfully"
    job = s["kibana-password"]["command"]
    assert "--fail" in job and '"{}"' in job and "exit 1" in job  # retries until {}, fails after a bound
    assert "healthcheck" in s["kibana"] and "healthcheck" in s["elasticsearch"]
    env = s["elasticsearch"]["environment"]
    assert "xpack.ml.use_auto_machine_memory_percent=true" in env and "mem_limit" in s["elasticsearch"]
    assert any(e.startswith("XPACK_ENCRYPTEDSAVEDOBJECTS_ENCRYPTIONKEY=") for e in s["kibana"]["environment"])


def test_docs_run_from_the_repository_root():
    readme = (ROOT / "docker" / "README.md").read_text()
    assert "docker compose -f docker/docker-compose.yml up -d --wait" in readme
    assert "down -v" in readme and "30 days" in readme
    assert "--kibana-url" not in (ROOT / "kibana" / "README.md").read_text()
