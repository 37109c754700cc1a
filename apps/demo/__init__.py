"""The demo: a real env server, a scripted agent, and a transcript of every episode.

``python -m apps.demo [--episodes 5] [--seed 0] [--env guess_number] [--remote URL]``
starts ``guess_number`` in a server subprocess on a free 127.0.0.1 port
(:class:`~forge_env.LocalProcessRuntime`), plays it over the OpenEnv wire with
:class:`~forge_env.RemoteEnv` and the env's scripted ``solve`` policy, prints each
episode and a summary, and stops the server.

>>> from apps.demo import DemoArgs, run_demo
>>> # summary = asyncio.run(run_demo(DemoArgs(episodes=3)))
>>> # summary.success_rate
>>> # 1.0
"""

from apps.demo._demo import DemoArgs, DemoSummary, EpisodeRecord, main, run_demo

__all__ = ["DemoArgs", "DemoSummary", "EpisodeRecord", "main", "run_demo"]
