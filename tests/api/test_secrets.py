"""No secret at rest (DESIGN section 9): no session token in any file of the state directory,
however it was issued, and every file there 0600, every directory 0700, whoever made them."""

from __future__ import annotations

import stat
import uuid
from collections.abc import Callable
from pathlib import Path

from tests.api.helpers import LONG_TTL_S, Api, task_request
from tests.support.daemon import Daemon


def issue_tokens(api: Api) -> list[str]:
    """Open sessions every way there is, retried with Idempotency-Keys, allocate and close;
    every token the daemon sent."""
    tokens: list[str] = []
    body = {"name": "secret", "ttl_s": LONG_TTL_S}
    for _ in range(3):
        tokens.append(api.anon.post("/v1/sessions", json=body).json()["token"])
    key = {"Idempotency-Key": str(uuid.uuid4())}
    for opener in (api.anon, api.admin):
        for _ in range(3):  # each retry of a keyed open sends a new token
            response = opener.post("/v1/sessions", json=body, headers=key)
            assert response.status_code == 201, response.text
            tokens.append(response.json()["token"])
    session = api.open_session("holder")
    tokens.append(session.token)
    for _ in range(2):
        response = session.http.post("/v1/sessions", json=body, headers=key)
        tokens.append(response.json()["token"])
    for _ in range(2):
        allocated = session.allocate(task_request(), **{"Idempotency-Key": str(uuid.uuid4())})
        assert allocated.status_code == 201, allocated.text
    closed = api.open_session("closed")
    tokens.append(closed.token)
    assert closed.http.delete(f"/v1/sessions/{closed.id}").status_code == 204
    return tokens


def files_holding(state_dir: Path, tokens: list[str]) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for path in sorted(p for p in state_dir.rglob("*") if p.is_file()):
        content = path.read_bytes()
        hits = [t for t in tokens if t.encode() in content]
        if hits:
            found[str(path.relative_to(state_dir))] = hits
    return found


def modes(state_dir: Path) -> dict[str, str]:
    """Every entry that is not 0600 (a file) or 0700 (a directory), with its mode."""
    wrong = {}
    for path in [state_dir, *state_dir.rglob("*")]:
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode != (0o700 if path.is_dir() else 0o600):
            wrong[str(path)] = oct(mode)
    return wrong


def test_no_token_issued_in_a_run_is_in_any_file_of_the_state_directory(
    make_daemon: Callable[..., Daemon], tmp_path: Path
) -> None:
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o755)  # as a Kubernetes hostPath is made
    (state_dir / "notes").mkdir(mode=0o755)
    (state_dir / "notes" / "operator.txt").write_text("left here by someone\n")
    (state_dir / "notes" / "operator.txt").chmod(0o644)
    daemon = make_daemon(state_dir=state_dir)
    api = Api(daemon)
    try:
        tokens = issue_tokens(api)
        assert len(tokens) == 13
        daemon.kill()  # the WAL holds every commit, unmerged
        assert (state_dir / "journal.sqlite3-wal").stat().st_size > 0
        assert files_holding(state_dir, tokens) == {}
        assert modes(state_dir) == {}

        daemon.start()
        tokens += issue_tokens(api)
        daemon.stop()  # merged into the journal file, and a snapshot written
        assert files_holding(state_dir, tokens) == {}
        assert modes(state_dir) == {}
    finally:
        api.close()
