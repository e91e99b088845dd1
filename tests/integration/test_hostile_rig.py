"""The rig of tests/integration/hostile_rig.py: every target answers its good call, over ttrpc and raw."""

from __future__ import annotations

import asyncio

import pytest

from shimstats.ttrpc import Client
from tests.integration.hostile_rig import check_answer, raw_socket, read_answers, request_frame, stack


@pytest.mark.slow
async def test_every_target_answers_its_good_call_and_raw_frames() -> None:
    with stack() as running:
        for target in running.targets().values():
            async with await Client.connect(target.address) as client:
                await target.good_call(client)
            with raw_socket(target.path) as sock:
                sock.sendall(request_frame(1, target))
                answer = await asyncio.to_thread(read_answers, sock, {1})
                assert isinstance(answer[1], bytes), f"{target.name}: {answer[1]}"
                check_answer(target, answer[1])
