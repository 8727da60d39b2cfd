"""rlmin's MuJoCo locomotion tasks, behaviour policies and dataset builder."""
import warnings

try:
    import mujoco

    # MuJoCo's default warning handler appends to MUJOCO_LOG.TXT in the working directory; send
    # its warnings through Python's instead, so a run leaves nothing outside its run dir.
    mujoco.set_mju_user_warning(lambda msg: warnings.warn(f"MuJoCo: {msg}", RuntimeWarning, stacklevel=2))
except ImportError:  # the tasks still list without MuJoCo installed
    pass
