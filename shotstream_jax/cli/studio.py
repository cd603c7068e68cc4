"""shotstream-studio: the storytelling studio, a web page and a live director API on one model.

  shotstream-studio                                  # the bundled default model, http://127.0.0.1:8000
  shotstream-studio --model=models/shotstream --host=0.0.0.0 --port=8080

Open the address in a browser: write a global caption and a shot, watch it play
while you type the next one; cut, rewind and branch the story, download it as
mp4. Programs use the same JSON + WebSocket API (README, "Studio").
"""
from __future__ import annotations

import socket
import sys

from absl import app, flags

from shotstream_jax.cli import common
from shotstream_jax.cli.common import fail, quiet_logs

FLAGS = flags.FLAGS
flags.DEFINE_string("model", None, "Model directory (default: the bundled default model).")
flags.DEFINE_string("host", "127.0.0.1", "Address to listen on (0.0.0.0: every interface).")
flags.DEFINE_integer("port", 8000, "Port to listen on.")
common.define_compilation_cache_flag()

PROG = "shotstream-studio"


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    quiet_logs()
    if not 0 < FLAGS.port < 65536:
        raise app.UsageError(f"--port must be in 1..65535, got {FLAGS.port}")
    try:  # before minutes of model loading: is the address ours to listen on?
        family = socket.getaddrinfo(FLAGS.host, FLAGS.port, type=socket.SOCK_STREAM)[0][0]
        socket.create_server((FLAGS.host, FLAGS.port), family=family).close()
    except OSError as e:
        return fail(PROG, f"cannot listen on {FLAGS.host}:{FLAGS.port}: {e.strerror or e}")
    common.use_compilation_cache(common.user_cache_dir())
    import uvicorn

    from shotstream_jax.pipeline import ShotStream
    from shotstream_jax.studio import create_app
    print(f"{PROG}: loading {FLAGS.model or 'the default model'} ...", file=sys.stderr, flush=True)
    try:
        pipe = ShotStream.load(FLAGS.model)
    except (OSError, ValueError) as e:
        return fail(PROG, str(e))
    print(f"{PROG}: open http://{FLAGS.host}:{FLAGS.port}/", file=sys.stderr, flush=True)
    uvicorn.run(create_app(pipe), host=FLAGS.host, port=FLAGS.port, log_level="warning")
    return 0


def run():
    common.run(main, __name__)


if __name__ == "__main__":
    run()
