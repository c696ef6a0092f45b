"""megatron-core's model on the CPU: the tiny Qwen2 built by the project's model factory
(``megatron/model.py``) and loaded from its HF weights gives the HF model's loss and gradients (fp32),
at TP = 1 and over two gloo ranks at TP = 2, TP = 2 with sequence parallelism and CP = 2, the pad
token's lookups included; and the RL log-prob pass (no gradient, temperature-scaled log-probs and
entropies) gives HF's values, as does the RL training forward, which measures the entropies beside
the log-probs without changing their gradient.

megatron-core 0.19.2 publishes wheels for Python 3.12 only; its model code is pure Python and runs
under 3.11 from the wheel that ``make venv`` unpacks into ``<venv>/megatron-core``. Only the spawned
ranks put it on ``sys.path`` (the rest of the suite runs without megatron-core, as a CPU install
does). ``MegatronBackend`` itself needs CUDA (megatron's DDP buffers and optimizer): tests/gpu/.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import AutoConfig

from nemo_ext.backends.megatron.convert import Shape
from nemo_ext.backends.megatron.layout import Layout
from nemo_ext.config.schema import ModelConfig
from nemo_ext.models.hf_config import rope_theta_of
from nemo_ext.models.tiny import build_tiny_checkpoint
from tests.helpers import run_gloo_ranks
from tests.megatron_reference import hf_logprobs_and_entropy, hf_reference_grads, random_batches

MEGATRON = Path(sys.prefix) / "megatron-core"  # unpacked by `make venv`
TEMPERATURE = 0.7  # of the log-prob pass


def _batches():
    return random_batches(2)


def _megatron_on_cpu(tp: int = 1, cp: int = 1) -> None:
    """megatron-core from the unpacked wheel, its CUDA-only helpers pointed at the CPU, model parallel
    groups over this spawned rank's gloo world."""
    if not (MEGATRON / "megatron").is_dir():
        raise RuntimeError(f"{MEGATRON} holds no megatron package: `make venv` unpacks megatron-core's wheel there")
    sys.path.insert(0, str(MEGATRON))
    from megatron.core import parallel_state, tensor_parallel

    assert dist.get_world_size() == tp * cp
    # megatron's TP gathers allocate on torch.cuda.current_device(): here, in this spawned rank only,
    # that is the CPU
    torch.cuda.current_device = lambda: "cpu"
    # sequence parallelism forks megatron's CUDA RNG for dropout (0 here): nothing to fork on the CPU
    tensor_parallel.get_cuda_rng_tracker().fork = lambda *args, **kwargs: contextlib.nullcontext()
    parallel_state.initialize_model_parallel(tensor_model_parallel_size=tp, context_parallel_size=cp)


def _tiny_chunks(model_dir: Path, layout: Layout) -> tuple[list, Shape, AutoConfig]:
    """The tiny model's megatron chunks under the local spec (fp32, on the CPU), from its HF weights."""
    from nemo_ext.backends.megatron import checkpoint
    from nemo_ext.backends.megatron.model import build_model_chunks, transformer_config

    hf_config = AutoConfig.from_pretrained(model_dir)
    shape = Shape.from_hf_config(hf_config)
    config = transformer_config(shape, hf_config, ModelConfig(), layout, impl="local", bf16=False, recompute=None,
                                init_weights=False, cpu_init=True)
    chunks = build_model_chunks(shape, hf_config, config, "local")
    checkpoint.load_hf_weights(chunks, shape, layout, model_dir)
    return chunks, shape, hf_config


def _megatron_rank(rank: int, out_dir: str, tp: int = 1, cp: int = 1, sp: bool = False) -> None:
    """One rank: build, load, forward + backward the batches, write loss and HF-named gradients."""
    _megatron_on_cpu(tp, cp)
    from megatron.core import parallel_state

    from nemo_ext.backends.megatron import checkpoint
    from nemo_ext.backends.megatron.backend import last_stage_logprobs
    from nemo_ext.backends.megatron.micro import build_micros

    layout = Layout(tp=tp, pp=1, cp=cp, dp=1, sequence_parallel=sp)
    chunks, shape, hf_config = _tiny_chunks(Path(out_dir) / "tiny", layout)

    def logprobs(*, hidden_states, output_layer, output_weight, context, **_):
        micro, temperature, with_entropy = context
        weight = output_weight if output_weight is not None else output_layer.weight
        return last_stage_logprobs(hidden_states, weight, micro, vocab_size=shape.vocab, temperature=temperature,
                                   with_entropy=with_entropy, sequence_parallel=sp)

    batches = _batches()
    total, loss = sum(b.num_loss_tokens for b in batches), 0.0
    rope = (shape.head_dim, rope_theta_of(hf_config), torch.float32)
    cp_rank = parallel_state.get_context_parallel_rank()
    micros = build_micros(batches, layout, layout.pad_multiple(), torch.device("cpu"), rope, cp_rank)

    def forward(micro, temperature: float, with_entropy: bool) -> torch.Tensor:
        return chunks[0](micro.input_ids, micro.position_ids, None, packed_seq_params=micro.packed,
                         output_processor=logprobs, output_processor_context=(micro, temperature, with_entropy))

    def backward(temperature: float, with_entropy: bool) -> tuple[float, dict, list]:
        """The summed NLL shares' forward + backward: (loss, HF-named gradients, outputs [T] or [2, T])."""
        loss, outputs = 0.0, []
        for p in chunks[0].parameters():
            p.grad = None
        for micro in micros:
            out = forward(micro, temperature, with_entropy)
            logp = out[0] if with_entropy else out
            batch = micro.batch  # whole on every CP rank: the log-probs are gathered back into its order
            share = -(logp[:batch.num_tokens] * batch.loss_mask).sum() / total
            share.backward()
            loss += float(share)
            outputs.append(out[..., :batch.num_tokens].detach())
        # What megatron's DDP and finalize_model_grads do: sum each CP rank's part (its tokens), and under
        # sequence parallelism the norms' parts over TP (each TP rank normed its share of the tokens).
        for p in chunks[0].parameters():
            dist.all_reduce(p.grad, group=parallel_state.get_context_parallel_group())
            if getattr(p, "sequence_parallel", False):
                dist.all_reduce(p.grad, group=parallel_state.get_tensor_model_parallel_group())
        grads = {name: g.clone() for name, g in checkpoint.hf_weights(chunks, shape, layout, te=False,
                                                                      tensor_of=lambda p: p.grad)}
        return loss, grads, outputs

    with torch.no_grad():  # the RL log-prob pass: [2, T] log-probs and entropies at a temperature
        with_entropy = [forward(micro, TEMPERATURE, True)[:, :micro.batch.num_tokens] for micro in micros]
    loss, grads, _ = backward(1.0, False)
    # the RL training forward: entropies beside the log-probs, the gradient unchanged
    _, grads_at_temperature, _ = backward(TEMPERATURE, False)
    _, grads_with_entropy, trained_with_entropy = backward(TEMPERATURE, True)
    parallel_state.destroy_model_parallel()
    if rank == 0:
        torch.save({"loss": loss, "grads": grads, "with_entropy": with_entropy,
                    "grads_at_temperature": grads_at_temperature, "grads_with_entropy": grads_with_entropy,
                    "trained_with_entropy": trained_with_entropy},
                   Path(out_dir) / f"tp{tp}_cp{cp}_sp{int(sp)}.pt")


@pytest.fixture(scope="module")
def hf_reference(tmp_path_factory) -> tuple[Path, float, dict, list]:
    out = tmp_path_factory.mktemp("megatron_cpu")
    model_dir = build_tiny_checkpoint(out / "tiny", seed=0)
    batches = _batches()
    pad_id = AutoConfig.from_pretrained(model_dir).pad_token_id
    # the case HF's padding_idx makes special: the pad token as an input of a trained sequence
    assert any((b.input_ids == pad_id).any() for b in batches)
    loss, grads = hf_reference_grads(str(model_dir), batches, sum(b.num_loss_tokens for b in batches), "cpu")
    return out, loss, grads, hf_logprobs_and_entropy(str(model_dir), batches, TEMPERATURE)


@pytest.mark.parametrize("tp,cp,sp", [(1, 1, False), (2, 1, False), (2, 1, True), (1, 2, False)],
                         ids=["one_rank", "tp2", "tp2_sp", "cp2"])
def test_megatron_model_gives_the_hf_models_loss_and_gradients(hf_reference, tp, cp, sp):
    out, hf_loss, hf_grads, hf_with_entropy = hf_reference
    run_gloo_ranks(functools.partial(_megatron_rank, tp=tp, cp=cp, sp=sp), out, nprocs=tp * cp)
    result = torch.load(out / f"tp{tp}_cp{cp}_sp{int(sp)}.pt")
    assert abs(result["loss"] - hf_loss) < 1e-5 * abs(hf_loss)
    mc = result["grads"]
    assert mc.keys() <= hf_grads.keys() <= mc.keys() | {"lm_head.weight"}  # a tied lm_head is left out
    for name, g in mc.items():
        err = float((g - hf_grads[name]).norm() / hf_grads[name].norm())
        assert err < 1e-4, f"{name}: relative gradient error {err:.2e}"
    for mine, ref in zip(result["with_entropy"], hf_with_entropy, strict=True):
        torch.testing.assert_close(mine, ref, rtol=0, atol=2e-5)
    for trained, ref in zip(result["trained_with_entropy"], hf_with_entropy, strict=True):
        torch.testing.assert_close(trained, ref, rtol=0, atol=2e-5)
    for name, g in result["grads_with_entropy"].items():
        plain = result["grads_at_temperature"][name]
        assert float((g - plain).norm()) <= 1e-6 * float(plain.norm()), name


def test_the_megatron_backend_requires_the_temperature_too():
    """As the torch backend (tests/test_sft_core.py): no default temperature to forget, checked on the
    class (MegatronBackend itself needs CUDA), in a process that imports megatron-core from the wheel."""
    import subprocess

    code = ("import inspect; from nemo_ext.backends.megatron.backend import MegatronBackend as B; "
            "print([inspect.signature(getattr(B, m)).parameters['temperature'].default is inspect.Parameter.empty "
            "for m in ('train_step', 'logprobs', 'forward_backward')])")
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}:{MEGATRON}"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "[True, True, True]"


def _extra_state_rank(rank: int, out_dir: str) -> None:
    """A checkpoint of the local spec's chunk loaded into a chunk whose final norm, like Transformer
    Engine's modules, has ``_extra_state``: the weights come back, the absent extra state is tolerated;
    a checkpoint that lacks a weight is refused, naming it."""
    _megatron_on_cpu()
    torch.cuda.synchronize = lambda *args: None  # megatron's checkpoint writer waits on CUDA; none here
    from megatron.core import dist_checkpointing, parallel_state

    from nemo_ext.backends.megatron.checkpoint import load_chunk_state, load_sharded

    out, layout = Path(out_dir), Layout(tp=1, pp=1, cp=1, dp=1)
    [saved], _, _ = _tiny_chunks(out / "tiny", layout)
    full, partial = out / "ckpt_full", out / "ckpt_without_final_norm"
    without_final_norm = {k: v for k, v in saved.sharded_state_dict().items() if k != "decoder.final_layernorm.weight"}
    for directory, state in [(full, saved.sharded_state_dict()), (partial, without_final_norm)]:
        directory.mkdir()
        dist_checkpointing.save({"model": state}, str(directory))
    norm_type = type(saved.decoder.final_layernorm)
    norm_type.get_extra_state = lambda self: torch.tensor([7.0])  # this spawned rank's class only
    norm_type.set_extra_state = lambda self, state: None
    [loaded], _, _ = _tiny_chunks(out / "tiny", layout)
    with torch.no_grad():
        for p in loaded.parameters():
            p.zero_()
    request = loaded.sharded_state_dict()
    assert "decoder.final_layernorm._extra_state" in request
    load_chunk_state(loaded, load_sharded({"model": request}, full)["model"])
    loaded_state = loaded.state_dict()
    same = all(torch.equal(t, loaded_state[k]) for k, t in saved.state_dict().items() if isinstance(t, torch.Tensor))
    try:
        load_sharded({"model": loaded.sharded_state_dict()}, partial)
        refused = ""
    except RuntimeError as e:
        refused = str(e)
    parallel_state.destroy_model_parallel()
    torch.save({"same": same, "refused": refused}, out / "extra_state.pt")


def test_a_checkpoint_without_extra_state_loads_into_a_model_that_has_it(tmp_path):
    """Transformer Engine's layer spec loading a local-spec checkpoint (tests/gpu checks the real
    cross-spec round trip): only absent ``_extra_state`` is tolerated, any absent weight is an error."""
    build_tiny_checkpoint(tmp_path / "tiny", seed=0)
    run_gloo_ranks(_extra_state_rank, tmp_path, nprocs=1)
    result = torch.load(tmp_path / "extra_state.pt")
    assert result["same"]
    assert "lacks 1 entries" in result["refused"] and "decoder.final_layernorm.weight" in result["refused"]
