"""Export a trained agent's carried-state step as one ONNX graph, run without torch by rlmin.onnx_policy.

    rlmin export CHECKPOINT policy.onnx          # the suffix picks ONNX (needs the `export` extra)
    from rlmin.policy import Policy
    policy = Policy.load("policy.onnx")          # an rlmin.onnx_policy.OnnxPolicy: numpy + onnxruntime

The graph is ONE acting step for n envs (n is a dynamic axis), all float32 but ``t`` (int64) and
``done`` (bool):

* inputs: ``obs`` [n, obs_dim] (raw: the dataset's normalisation is inside the graph),
  ``reward`` [n] (of the previous action; ignored on a row's first step), ``done`` [n] (the row's
  ``obs`` starts a new episode: its state is reset inside the graph, R = target and t = 0), then
  the state, named as the torch agent's state keys: ``target`` [n], ``rtg`` [n], ``t`` [n],
  ``prev_action`` [n, act_dim] (``rlmin.step_protocol``), then the agent's own (``backbone.0``, ...).
* outputs: ``action`` [n, act_dim], then the new state ``next.rtg``, ``next.t``,
  ``next.backbone.0``, ... (``target`` does not change; the next ``prev_action`` is ``action``).

The graph is traced from the module the agent's ``carry_step_module()`` returns (``rlmin.agent``
documents it; the decision agent's is ``CarryStep``, agents/decision_acting.py), with the minRNN
scans on their plain-op reference path (``reference_scans``), so the graph and the agent compute
one function. The metadata a policy needs (format, the agent record, the eval spec with env id,
target returns and reference scores, the state's names, shapes and dtypes) is JSON in the model's
``metadata_props["rlmin"]``: the .onnx file is the whole deployment. An agent without a carried
state (a transformer, or any agent acting in ``window`` mode) is refused in one line.
"""
from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import torch

from rlmin.checkpoint import CheckpointError, atomic_write_bytes
from rlmin.nn import reference_scans
from rlmin.policy import agent_from_payload, load_payload
from rlmin.rundir import check_output

FORMAT = "rlmin-onnx-policy-v1"
METADATA_KEY = "rlmin"
OPSET = 17  # LayerNormalization is an ONNX op from opset 17
INPUTS = ("obs", "reward", "done")


def state_layout(agent, keys) -> list[dict]:
    """The acting state's tensors ``keys``: name, per-row shape (after the n_envs dim) and dtype."""
    state = agent.reset(1, 0.0)
    return [{"name": k, "shape": list(state[k].shape[1:]),
             "dtype": str(state[k].dtype).removeprefix("torch.")} for k in keys]


def _softplus(g, x, beta, threshold):
    """aten::softplus as relu(x) + log(1 + exp(-|x|)): the same values to float32 rounding as ONNX's
    Softplus op, which ONNX Runtime runs scalar: 3x slower on a [16, 192] tensor, and the minLSTM
    gates take two per token and layer (measured: the minLSTM policy at 16 envs ran ~2x the minGRU's)."""
    from torch.onnx import symbolic_helper

    scale = symbolic_helper._maybe_get_const(beta, "f")
    bx = x if scale == 1 else g.op("Mul", x, beta)
    one = g.op("Constant", value_t=torch.tensor(1.0))
    log_term = g.op("Log", g.op("Add", g.op("Exp", g.op("Neg", g.op("Abs", bx))), one))
    y = g.op("Add", g.op("Relu", bx), log_term)
    return y if scale == 1 else g.op("Div", y, beta)


def onnx_bytes(agent, metadata: dict | None = None) -> bytes:
    """The serialised ONNX model of ``agent.carry_step_module()`` (float32), ``metadata`` in its props."""
    import onnx  # the `export` extra

    source = agent
    agent = type(source)(source.spec, source.options).eval()  # float32; the caller's agent is left alone
    agent.load_state_dict(source.state_dict())
    agent.act_mode = source.act_mode  # as the caller's agent acts (it may be inside ``acting(mode)``)
    step = agent.carry_step_module().eval()  # an agent without a carried state refuses, in one line
    layout = state_layout(agent, step.state_keys)
    n = 2  # any example batch: the envs axis is dynamic
    state = agent.reset(n, [1.0, 2.0])
    example = (torch.zeros(n, agent.obs_dim), torch.zeros(n), torch.zeros(n, dtype=torch.bool),
               *(state[s["name"]] for s in layout))
    inputs = [*INPUTS, *(s["name"] for s in layout)]
    outputs = ["action", *(f"next.{k}" for k in step.updated_keys)]
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings(), reference_scans(step):
        # The TorchScript exporter: it traces plain ops with no extra dependency (the dynamo
        # exporter needs onnxscript). Its deprecation and tracer warnings say nothing about this graph.
        warnings.simplefilter("ignore")
        torch.onnx.register_custom_op_symbolic("aten::softplus", _softplus, OPSET)
        try:
            torch.onnx.export(step, example, buffer, dynamo=False, opset_version=OPSET,
                              input_names=inputs, output_names=outputs,
                              dynamic_axes={name: {0: "n_envs"} for name in (*inputs, *outputs)})
        finally:  # the registration is process-wide: leave other exports as they were
            torch.onnx.unregister_custom_op_symbolic("aten::softplus", OPSET)
    model = onnx.load_from_string(buffer.getvalue())
    meta = {"format": FORMAT, "obs_dim": agent.obs_dim, "act_dim": agent.act_dim,
            "inputs": list(INPUTS), "state": layout, "outputs": outputs, **(metadata or {})}
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.checker.check_model(model)
    return model.SerializeToString()


QUANTIZATIONS = ("int8",)


def quantize_int8(model_bytes: bytes) -> bytes:
    """The graph with its MatMul/Gemm weights in int8 and their inputs quantized at run time
    (ONNX Runtime's dynamic quantization; metadata kept). Faster where the CPU has int8 dot
    products (AVX-512 VNNI), and no longer exact: rlmin eval the .onnx file to see its score."""
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        fp32, pre, q = (Path(tmp) / name for name in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        fp32.write_bytes(model_bytes)
        quant_pre_process(fp32, pre)  # shape inference + graph cleanup, as ORT's docs ask first
        # per-tensor weights: per-channel measured slower at these sizes (0.62 against 0.51 ms).
        # reduce_range (7-bit weights): on CPUs without VNNI (AVX2 only) ORT's u8s8 kernel sums
        # pairs of products in int16 and saturates; full-range weights gave actions off by 0.6
        # there (AMD EPYC, AVX2) against < 0.1 with VNNI.
        quantize_dynamic(pre, q, op_types_to_quantize=["MatMul", "Gemm"],
                         weight_type=QuantType.QInt8, reduce_range=True)
        return q.read_bytes()


def export_onnx(checkpoint: str | Path, out: str | Path, quantize: str | None = None,
                overwrite: bool = False) -> Path:
    """Write an ONNX policy (graph + metadata, one file) from a checkpoint, run dir or .pt policy.

    ``quantize="int8"``: weights in int8 (:func:`quantize_int8`); the metadata says so. ``out``
    is checked first (``rlmin.rundir.check_output``): an existing file only with ``overwrite``."""
    out = Path(out)
    check_output(out, overwrite=overwrite, flag="output", source=Path(checkpoint))
    if quantize not in (None, *QUANTIZATIONS):
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZATIONS)} (or None); got {quantize!r}")
    payload, source = load_payload(checkpoint)
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise CheckpointError("ONNX export needs the onnx package: pip install 'rlmin[export]'") from None
    agent = agent_from_payload(payload)
    metadata = {"agent": payload["agent"], "eval_spec": payload["eval_spec"],
                "dataset": payload.get("dataset"), "step": payload.get("step"), "source": str(source),
                "quantization": quantize, "describe": agent.describe()}
    limit = agent.max_target_return()
    if limit is not None:  # OnnxPolicy.reset refuses what the agent refuses
        metadata["max_target_return"] = float(limit)
    data = onnx_bytes(agent, metadata)
    if quantize == "int8":
        data = quantize_int8(data)
    atomic_write_bytes(out, lambda f: f.write(data))  # a reader never sees half a file
    return out
