"""A child of ``marketcast cluster`` stops when its supervisor's pipe closes, and exits
even when its clean shutdown hangs."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap

import pytest

from app.cluster import PARENT_FD_ENV
from tests.waiting import within

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from app.cluster import exit_with_parent
    from app.loop import run_until_signalled

    async def serve(stubborn: bool) -> None:
        print("serving", flush=True)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            if not stubborn:
                raise
        print("cleanup hangs", flush=True)
        await asyncio.Event().wait()  # a shutdown that never ends

    sys.exit(run_until_signalled(exit_with_parent(serve(sys.argv[1] == "stubborn"), grace=0.5)))
    """
)


async def run_child(mode: str) -> tuple[int, bytes]:
    read_fd, write_fd = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            CHILD,
            mode,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=dict(os.environ) | {PARENT_FD_ENV: str(read_fd)},
            pass_fds=(read_fd,),
        )
        assert process.stdout is not None
        assert await asyncio.wait_for(process.stdout.readline(), 30) == b"serving\n"
    finally:
        os.close(read_fd)
        os.close(write_fd)  # the "supervisor" is gone: the child's pipe reads EOF
    try:
        output, _ = await asyncio.wait_for(process.communicate(), 30)
    finally:
        if process.returncode is None:
            process.kill()
            await within(process.wait(), "the killed child's exit")
    assert process.returncode is not None
    return process.returncode, output


@pytest.mark.parametrize(("mode", "status"), [("clean", 0), ("stubborn", 1)])
async def test_a_child_exits_when_its_supervisor_is_gone(mode: str, status: int) -> None:
    returncode, output = await run_child(mode)
    assert returncode == status
    assert (b"cleanup hangs" in output) is (mode == "stubborn")
    if mode == "stubborn":
        assert b"still stopping 0 s after the supervisor went; exiting" in output
