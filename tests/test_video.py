"""`rlmin eval X --video out.gif|out.mp4`: one episode from MuJoCo's offscreen renderer.

Run through the real command line in a subprocess: MuJoCo picks its GL backend once, when it is
imported, and the test process imported it long ago. Where this machine cannot render (no EGL),
the tests skip, except under CI, whose .ci/run installs the rendering packages and must render.
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from rlmin.train import train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

STEPS = 12  # the episode's time limit: a few frames


def _cli(*args, env_extra=None, cwd=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    if env_extra and env_extra.get("MUJOCO_GL") is None:
        env.pop("MUJOCO_GL", None)
    return subprocess.run([sys.executable, "-m", "rlmin.cli", *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=300)


def _can_render() -> bool:
    probe = ("import gymnasium as gym; e = gym.make('Hopper-v5', render_mode='rgb_array', "
             "width=32, height=24); e.reset(seed=0); print(e.render().shape)")
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env,
                         timeout=120)
    return out.returncode == 0


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tiny_config):
    if not _can_render():
        if os.environ.get("CI"):
            pytest.fail("CI must render: .ci/run installs libegl1, libegl-mesa0, libgl1-mesa-dri")
        pytest.skip("MuJoCo cannot render offscreen on this machine (no EGL)")
    run = tmp_path_factory.mktemp("video") / "run"
    train(tiny_config(run))
    return run


@pytest.mark.parametrize("suffix", [".gif", ".mp4"])
def test_video_of_one_episode_with_step_and_return_drawn(run_dir, tmp_path, suffix):
    import imageio.v2 as imageio

    out = tmp_path / f"agent{suffix}"
    done = _cli("eval", str(run_dir), "--episodes", "1", "--max-episode-steps", str(STEPS),
                "--out", str(tmp_path / "eval.json"), "--video", str(out))
    assert done.returncode == 0, done.stderr
    assert f"video: {out}" in done.stdout
    frames = [np.asarray(f)[..., :3] for f in imageio.mimread(out)]
    # Hopper renders at 125 fps; every 4th step is kept (~31 fps), plus the first frame and the
    # last step's: an episode of n steps gives 1 + ceil(n / 4) frames.
    length = int(done.stdout.split("video: ")[1].split("(")[1].split(" steps")[0])
    assert 1 <= length <= STEPS
    assert len(frames) == 1 + -(-length // 4)
    assert frames[0].shape == (360, 480, 3)
    corner = [f[:16, :80].astype(int) for f in frames]
    assert (corner[0] < 40).mean() > 0.5, "no dark box behind the text in the top-left corner"
    assert (corner[0] > 200).any(), "no white text in the corner"
    if len(frames) > 2:
        assert np.abs(corner[-1] - corner[0]).sum() > 0, "the step counter did not change"
        scene = [f[60:, :].astype(int) for f in frames]
        assert np.abs(scene[-1] - scene[0]).mean() > 0.1, "the hopper did not move"
    assert not list(tmp_path.glob(".*part*")), "a partial file was left behind"


def test_an_existing_video_is_kept_without_overwrite(run_dir, tmp_path):
    out = tmp_path / "mine.gif"
    out.write_bytes(b"the user's file")
    done = _cli("eval", str(run_dir), "--episodes", "1", "--max-episode-steps", str(STEPS),
                "--out", str(tmp_path / "eval.json"), "--video", str(out))
    assert done.returncode == 2 and "--overwrite" in done.stderr
    assert out.read_bytes() == b"the user's file"
    assert not (tmp_path / "eval.json").exists(), "the check must come before the evaluation"


@pytest.mark.parametrize("video, env, code, needle", [
    ("agent.avi", {}, 2, ".mp4 or .gif"),
    ("agent.gif", {"MUJOCO_GL": "nonsense"}, 1, "MUJOCO_GL"),
])
def test_video_mistakes_are_one_line(run_dir, tmp_path, video, env, code, needle):
    done = _cli("eval", str(run_dir), "--episodes", "1", "--max-episode-steps", str(STEPS),
                "--out", str(tmp_path / "eval.json"), "--video", str(tmp_path / video),
                env_extra=env)
    assert done.returncode == code, done.stderr
    lines = [ln for ln in done.stderr.splitlines() if ln.strip() and "Warning" not in ln
             and "set_mju_user_warning" not in ln]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in done.stderr, done.stderr
