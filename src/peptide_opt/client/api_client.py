"""A small synchronous client of the peptide-opt HTTP API."""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from peptide_opt.errors import InputError, PeptideOptError

TERMINAL_STATUSES = ("finished", "failed", "cancelled")
DEFAULT_TIMEOUT_S = 60.0


class ApiRequestError(PeptideOptError):
    """The server rejected a request or could not be reached."""

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code
        # Rejected input (422, 413) exits with 2 like local input errors.
        if status_code in (413, 422):
            self.exit_code = 2


class ApiClient:
    """Calls the /v1 routes of one server with one key."""

    def __init__(self, url: str, key: str | None, timeout_s: float = DEFAULT_TIMEOUT_S):
        if not key:
            raise InputError("no API key: pass --key or set PEPTIDE_OPT_KEY")
        if not url.startswith(("http://", "https://")):
            raise InputError(f"server URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Bearer {key}"},
            timeout=timeout_s,
        )

    def __enter__(self) -> ApiClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def submit(
        self,
        receptor: Path,
        peptide: str,
        config: Mapping[str, str] | None = None,
        priority: int | None = None,
        file_name: str | None = None,
    ) -> dict[str, Any]:
        """Upload a receptor file and a peptide with config fields; return the task.

        ``file_name`` is the name the server stores, by default the file's own.
        """
        fields = {"peptide": peptide, **{k: str(v) for k, v in (config or {}).items()}}
        if priority is not None:
            fields["priority"] = str(priority)
        try:
            handle = receptor.open("rb")
        except OSError as error:
            raise InputError(f"receptor {receptor}: cannot be read ({error})") from None
        with handle:
            name = file_name or receptor.name
            files = {"receptor": (name, handle, "application/octet-stream")}
            return self._json("POST", "/v1/tasks", data=fields, files=files)

    def submit_stored(self, body: Mapping[str, Any]) -> dict[str, Any]:
        """Submit a task whose inputs are already under the caller's uploads folder."""
        return self._json("POST", "/v1/tasks", json=dict(body))

    def task(self, task_id: str) -> dict[str, Any]:
        """Return one task."""
        return self._json("GET", f"/v1/tasks/{_quote(task_id)}")

    def tasks(
        self, status: str | None = None, limit: int = 20, offset: int = 0
    ) -> dict[str, Any]:
        """Return one page of the caller's tasks, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._json("GET", "/v1/tasks", params=params)

    def cancel(self, task_id: str) -> dict[str, Any]:
        """Cancel a pending or processing task."""
        return self._json("POST", f"/v1/tasks/{_quote(task_id)}/cancel")

    def result(self, task_id: str) -> dict[str, Any]:
        """Return a finished task's result.json."""
        return self._json("GET", f"/v1/tasks/{_quote(task_id)}/result")

    def download(self, task_id: str, name: str, destination: Path) -> Path:
        """Stream one result file to ``destination``."""
        path = f"/v1/tasks/{_quote(task_id)}/files/{_quote(name, safe='/')}"
        temporary = destination.with_name(f".{destination.name}.part")
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream("GET", path) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error(response)
                with temporary.open("wb") as handle:
                    for chunk in response.iter_bytes():
                        handle.write(chunk)
        except httpx.HTTPError as error:
            temporary.unlink(missing_ok=True)
            raise self._unreachable(error) from None
        temporary.replace(destination)
        return destination

    def wait(
        self,
        task_id: str,
        timeout_s: float | None = None,
        interval_s: float = 5.0,
        on_change=None,
    ) -> dict[str, Any]:
        """Poll a task until it ends; return it. Raises on timeout (seconds)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        last = None
        while True:
            task = self.task(task_id)
            state = (task["status"], task.get("current_step"), task.get("progress"))
            if on_change is not None and state != last:
                on_change(task)
            last = state
            if task["status"] in TERMINAL_STATUSES:
                return task
            if deadline is not None and time.monotonic() >= deadline:
                raise PeptideOptError(
                    f"task {task_id} is still {task['status']} after {timeout_s:g} s "
                    "(--timeout); it keeps running on the server"
                )
            time.sleep(interval_s)

    def _json(self, method: str, path: str, **options: Any) -> dict[str, Any]:
        try:
            response = self._http.request(method, path, **options)
        except httpx.HTTPError as error:
            raise self._unreachable(error) from None
        if response.status_code >= 400:
            raise _error(response)
        return response.json()

    def _unreachable(self, error: httpx.HTTPError) -> ApiRequestError:
        return ApiRequestError(
            f"request to {self.url} failed: {error}; check --url or PEPTIDE_OPT_URL"
        )


def _error(response: httpx.Response) -> ApiRequestError:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    if not isinstance(detail, str):
        detail = response.text[:500] or response.reason_phrase
    return ApiRequestError(
        f"server responded {response.status_code}: {detail}", response.status_code
    )


def _quote(text: str, safe: str = "") -> str:
    return quote(text, safe=safe)
