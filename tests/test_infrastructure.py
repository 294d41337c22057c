"""The test infrastructure itself: real tokenizer, tiny Mistral folders, in-process
DeepSpeed, and a package that imports without torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from tests import helpers


def test_real_mistral_tokenizer_ids(mistral_tokenizer_dir):
    from transformers import LlamaTokenizer

    tok = LlamaTokenizer.from_pretrained(mistral_tokenizer_dir)
    assert len(tok) == 32000
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    # ids of the released Mistral-7B v0.1 SentencePiece model
    ids = tok.encode("[INST] Hello world [/INST]\n", add_special_tokens=False)
    assert ids == [733, 16289, 28793, 22557, 1526, 733, 28748, 16289, 28793, 13]


def test_tiny_mistral_folder_loads_through_from_pretrained(tiny_mistral_dir):
    from transformers import MistralForCausalLM

    model = MistralForCausalLM.from_pretrained(tiny_mistral_dir, attn_implementation="sdpa")
    assert model.config._attn_implementation == "sdpa"
    ids = torch.tensor([[1, 733, 16289, 28793]])
    logits = model(input_ids=ids).logits
    assert logits.shape == (1, 4, 32000)
    # same weights as saved: a second load gives the same logits
    again = MistralForCausalLM.from_pretrained(tiny_mistral_dir)(input_ids=ids).logits
    torch.testing.assert_close(logits, again)


@pytest.mark.parametrize("zero_stage", [2, 3])
def test_in_process_deepspeed_engine_trains(ds_process_group, tiny_mistral_dir, zero_stage):
    import deepspeed
    from transformers import MistralForCausalLM

    model = MistralForCausalLM.from_pretrained(tiny_mistral_dir)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    config = {
        "train_micro_batch_size_per_gpu": 2,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": zero_stage},
        "gradient_clipping": 1.0,
    }
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)
    ids = torch.randint(3, 32000, (2, 16))
    losses = []
    for _ in range(5):
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_package_imports_without_torchvision():
    # A None entry in sys.modules is exactly how Python sees an absent package: find_spec
    # returns None and `import torchvision` raises ImportError.
    code = (
        "import sys\n"
        "sys.modules['torchvision'] = None\n"
        "import divot_llm, divot_llm.config, divot_llm.data.synthetic, divot_llm.data.video_codec\n"
        "from transformers import MistralForCausalLM\n"
        "import diffusers\n"
        "assert sys.modules['torchvision'] is None\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=helpers.REPO_ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


@pytest.mark.gpu
def test_tiny_mistral_bf16_on_cuda_matches_fp32(tiny_mistral_dir):
    from transformers import MistralForCausalLM

    ids = torch.randint(3, 32000, (2, 32), device="cuda")
    model = MistralForCausalLM.from_pretrained(tiny_mistral_dir, attn_implementation="sdpa").cuda()
    ref = model(input_ids=ids).logits.float()
    out = model.to(torch.bfloat16)(input_ids=ids).logits.float()
    assert (out - ref).abs().max() < 0.1 * ref.abs().max()
