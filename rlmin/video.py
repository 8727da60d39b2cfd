"""One episode of a policy as a video file (``rlmin eval X --video out.mp4|out.gif``).

MuJoCo renders offscreen (``MUJOCO_GL=egl`` by default here, ``osmesa`` also works); imageio
writes the file (GIF through Pillow, MP4 through the ffmpeg binary of imageio-ffmpeg), frame by
frame, so a long episode never sits in memory. The step and the return so far are drawn in the
top-left corner. The file appears only when complete (written aside, then renamed).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from rlmin.errors import VideoError

SUFFIXES = (".mp4", ".gif")
TARGET_FPS = 30  # frames kept per second of simulated time: smooth, and small files
RENDER_HINT = ("set MUJOCO_GL=egl (Debian: apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri) "
               "or MUJOCO_GL=osmesa (apt-get install libosmesa6)")


def choose_gl_backend() -> None:
    """Offscreen rendering unless the user chose a backend: call before MuJoCo is imported (it
    reads MUJOCO_GL once, at import; its default, glfw, needs a display)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        from mujoco.rendering.classic import gl_context  # noqa: F401  (raises on a bad MUJOCO_GL)
    except ImportError:
        pass  # an older MuJoCo: gymnasium's renderer will say it
    except Exception as e:
        raise _cannot_render(e) from None


def _cannot_render(e: BaseException) -> VideoError:
    return VideoError(f"MuJoCo cannot render offscreen here ({' '.join(str(e).split())[:160]}): "
                      f"{RENDER_HINT}")


def check_video_path(out: Path) -> None:
    """Before any work: a known suffix, and the writer that suffix needs is installed."""
    if out.suffix.lower() not in SUFFIXES:
        raise VideoError(f"--video {out}: give a .mp4 or .gif file name")
    try:
        import imageio.v2  # noqa: F401
        if out.suffix.lower() == ".mp4":
            import imageio_ffmpeg  # noqa: F401  (ships the ffmpeg binary)
    except ImportError as e:
        raise VideoError(f"--video {out.suffix} needs {e.name.replace('_', '-')}: pip install "
                         "'rlmin[video]'") from None


def _overlay(frame: np.ndarray, text: str) -> np.ndarray:
    from PIL import Image, ImageDraw

    image = Image.fromarray(frame)
    draw = ImageDraw.Draw(image)
    box = draw.textbbox((6, 4), text)
    draw.rectangle((box[0] - 4, box[1] - 3, box[2] + 4, box[3] + 3), fill=(0, 0, 0))
    draw.text((6, 4), text, fill=(255, 255, 255))
    return np.asarray(image)


def _make_env(env_id: str, width: int, height: int, max_episode_steps: int | None):
    import gymnasium as gym

    kw = dict(render_mode="rgb_array", width=width, height=height,
              max_episode_steps=max_episode_steps)
    try:
        env = gym.make(env_id, **kw)
        if _has_camera(env, "track"):  # the locomotion models' camera that follows the body
            env.close()
            env = gym.make(env_id, camera_name="track", **kw)
    except Exception as e:  # MuJoCo's import or GL setup: its own words, then the fix
        raise _cannot_render(e) from None
    return env


def _has_camera(env, name: str) -> bool:
    model = getattr(env.unwrapped, "model", None)
    if model is None:
        return False
    import mujoco

    return mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, name) >= 0


def record_episode(agent, spec, out: str | Path, *, target_return: float, seed: int,
                   max_episode_steps: int | None = None, width: int = 480, height: int = 360) -> dict:
    """Play one episode of ``agent`` (the agent contract: reset/act) in ``spec.env_id`` from
    reset seed ``seed`` and write it to ``out``; returns its return, length and frame count."""
    import imageio.v2 as imageio

    out = Path(out)
    check_video_path(out)
    env = _make_env(spec.env_id, width, height, max_episode_steps or spec.max_episode_steps)
    every = max(1, round(env.metadata.get("render_fps", TARGET_FPS) / TARGET_FPS))
    fps = env.metadata.get("render_fps", TARGET_FPS) / every
    tmp = out.with_name(f".{out.name}.part{out.suffix}")  # the suffix tells imageio the format
    total, t, frames = 0.0, 0, 0
    try:
        obs, _ = env.reset(seed=seed)
        try:
            first = env.render()
        except Exception as e:
            raise _cannot_render(e) from None
        kw = {"fps": fps, "macro_block_size": 8} if out.suffix.lower() == ".mp4" else \
             {"duration": 1000.0 / fps, "loop": 0}
        with imageio.get_writer(tmp, **kw) as writer:
            writer.append_data(_overlay(first, "step 0  return 0"))
            frames += 1
            state, reward = agent.reset(1, target_return), None
            while True:
                action, state = agent.act(obs[None], None if reward is None else np.array([reward]),
                                          state)
                obs, reward, terminated, truncated, _ = env.step(np.asarray(action)[0])
                total, t = total + float(reward), t + 1
                if t % every == 0 or terminated or truncated:
                    writer.append_data(_overlay(env.render(), f"step {t}  return {total:.0f}"))
                    frames += 1
                if terminated or truncated:
                    break
        os.replace(tmp, out)
    finally:
        env.close()
        tmp.unlink(missing_ok=True)
    return {"path": str(out), "return": total, "length": t, "frames": frames, "fps": fps,
            "target_return": float(target_return), "seed": int(seed)}
