"""One acting step of a return-conditioned agent, written once for every runtime that runs it.

The torch agent's ``act``, the ONNX graph traced from its carry step, and ``rlmin.onnx_policy``
(numpy + onnxruntime) all step the same fixed state: ``target`` (the return asked for), ``rtg``
(the R_t of the last step), ``t`` (steps taken; 0: the next step is an episode's first) and
``prev_action``. The functions take the caller's ``where`` (``torch.where`` or ``numpy.where``)
and its arrays, and this module imports nothing, so a deployment copies it beside onnx_policy.py.
"""

TARGET, RTG, T, PREV_ACTION = "target", "rtg", "t", "prev_action"
FIXED_STATE = (TARGET, RTG, T, PREV_ACTION)  # an agent's own keys (e.g. its recurrent state) follow
UPDATED_STATE = (RTG, T)  # a graph's outputs next.<key>: target never changes, prev_action is the action

REWARD_REQUIRED = "reward is required for rows past their first step (the reward of the previous action)"


def restart(where, t, done):
    """``t`` with rows whose observation starts a new episode (``done``) back on step 0."""
    return where(done, 0, t)


def check_reward(reward, first) -> None:
    """ValueError unless ``reward`` is given or every row is on its first step (``first`` bool [n])."""
    if reward is None and not bool(first.all()):
        raise ValueError(REWARD_REQUIRED)


def begin_step(where, first, target, rtg, reward, prev_action):
    """This step's R_t and a_{t-1} from the last step's state, per row.

    A row's first R is its target; after that R_t = R_{t-1} - r, the reward of the previous
    action. An episode's first step has no a_{t-1}: it is zero there.
    """
    rtg = where(first, target, rtg - reward)
    prev = where(first[:, None], 0.0, prev_action)
    return rtg, prev


def end_step(rtg, t, action) -> dict:
    """The fixed state keys a step changes: the R_t it used, one more step, its action as the next
    a_{t-1} (``target`` is kept)."""
    return {RTG: rtg, T: t + 1, PREV_ACTION: action}
