"""Starts PROCESSES copies of a command the way torchrun does, through PyTorch's elastic agent
with torchrun's default static rendezvous at 127.0.0.1:PORT (the agent serves its store there,
and each worker gets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT and
TORCHELASTIC_RUN_ID). The torchrun command line of Debian's torch 1.13 fails on Python 3.11
before it starts anything (its --redirects parsing), so tests call the agent directly.

usage: elastic_launch.py PROCESSES PORT COMMAND [ARGS...]
"""
import sys

from torch.distributed.elastic.multiprocessing import Std
from torch.distributed.launcher.api import LaunchConfig, elastic_launch

processes, port = int(sys.argv[1]), int(sys.argv[2])
config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id="minitron-test",
                      rdzv_backend="static", rdzv_endpoint=f"127.0.0.1:{port}",
                      rdzv_configs={"rank": 0, "timeout": 120}, max_restarts=0, monitor_interval=0.5,
                      redirects=Std.NONE, tee=Std.NONE)
elastic_launch(config, entrypoint=sys.argv[3])(*sys.argv[4:])
