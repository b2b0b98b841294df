"""Who may see the dashboard: loopback without a token; anything else only with one, and
then every request without it gets 401. Also how the command fails: no extra, no database."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from playwright.sync_api import expect
from web_server import WebServer, chromium_session

TOKEN = "lab-" + uuid.uuid4().hex


@pytest.fixture
def lab_db(db_path, start_daemon):
    """A database with one event, its daemon running."""
    from memory_bank import Publisher

    start_daemon(db_path)
    with Publisher(db_path) as pub:
        pub.log_event("OCPP_BOOT", "CSMS", "hello")
        assert pub.flush(20)
    return db_path


def run_web(*args: str, code: str = "") -> subprocess.CompletedProcess:
    """`memorybank web` that is expected to stop at once (refusals)."""
    program = code + "from memory_bank.cli import main; main(sys.argv[1:], prog_name='memorybank')"
    return subprocess.run(
        [sys.executable, "-c", "import sys\n" + program, "web", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10"])
def test_listening_beyond_loopback_without_a_token_is_refused(lab_db, host):
    result = run_web("--db", str(lab_db), "--host", host, "--port", "0")
    assert result.returncode == 2
    assert f"--host {host} would serve the dashboard beyond this machine" in result.stderr
    assert "--token" in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def guarded(lab_db):
    web = WebServer(lab_db, "--token", TOKEN)
    yield web
    assert web.stop() == 0, "".join(web.output)


@pytest.mark.parametrize(
    "path", ["/api/summary", "/api/events", "/api/stream", "/api/status", "/static/app.js", "/"]
)
def test_without_the_token_every_request_gets_401(guarded, path):
    status, head, body = guarded.get(path)
    assert status == 401 and head["www-authenticate"] == "Bearer"
    assert body == {"error": "a token is required: Authorization: Bearer TOKEN"}
    status, _, _ = guarded.get(path, {"Authorization": "Bearer not-" + TOKEN})
    assert status == 401
    if path != "/api/stream":
        status, _, _ = guarded.get(path, {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200


@pytest.fixture(scope="module")
def browser():
    yield from chromium_session()


def test_a_browser_signs_in_once_with_an_httponly_cookie(guarded, browser):
    status, _, page_text = guarded.get("/", {"Accept": "text/html"})
    assert status == 401 and 'name="token"' in page_text  # the login page, still a 401
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(guarded.url)
    assert response.status == 401
    page.locator("#token").fill("wrong")
    page.locator("button[type=submit]").click()
    expect(page.locator(".error")).to_have_text("Wrong token.")
    page.locator("#token").fill(TOKEN)
    page.locator("button[type=submit]").click()
    expect(page.locator("#total-events")).to_have_text("1")
    expect(page.locator("#live-status")).to_contain_text("live: following")
    (cookie,) = context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]  # the cookie does not reveal the token
    context.close()


def test_the_token_may_come_from_the_configuration(lab_db, tmp_path):
    config = tmp_path / "memorybank.toml"
    config.write_text(f'[web]\ntoken = "{TOKEN}"\n')
    web = WebServer(lab_db, "--config", str(config))
    try:
        assert web.get("/api/summary")[0] == 401
        assert web.get("/api/summary", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        assert web.stop() == 0


def test_without_the_web_extra_the_command_says_what_to_install(lab_db):
    hide = "sys.modules['starlette'] = None\nsys.modules['uvicorn'] = None\n"
    result = run_web("--db", str(lab_db), code=hide)
    assert result.returncode == 1
    assert 'is not installed: pip install "memory_bank[web]"' in result.stderr
    assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_the_core_install_never_imports_the_web_stack():
    code = (
        "import sys, memory_bank, memory_bank.cli, memory_bank.viewer\n"
        "heavy = [m for m in ('starlette', 'uvicorn', 'anyio') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_a_missing_database_is_an_error_and_nothing_is_created(tmp_path):
    missing = tmp_path / "nothing.db"
    result = run_web("--db", str(missing))
    assert result.returncode == 2 and "no database at" in result.stderr
    assert not missing.exists()


def test_a_bad_web_setting_is_refused_with_its_name(lab_db, tmp_path):
    config = tmp_path / "memorybank.toml"
    config.write_text("[web]\nport = 70000\n")
    result = run_web("--db", str(lab_db), "--config", str(config))
    assert result.returncode == 2
    assert "web.port: expected a whole number from 0 to 65535, got 70000" in result.stderr
