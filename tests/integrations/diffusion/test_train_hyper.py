"""The diffusion script's `--hyper` flag: a HyperLoRAModel over a frozen tiny UNet trained with the group objective,
PLE with images sampled from the model, checkpoints, and the plain LoRA export loaded without hf_egt."""

from __future__ import annotations

import json

import pytest
import torch

from hf_egt.integrations.diffusion.losses import per_example_mse
from tests.integrations.diffusion.test_train import (
    DIGITS,
    save_tiny_caption_dataset,
    save_tiny_stable_diffusion,
    save_tiny_unet2d,
)

diffusers = pytest.importorskip("diffusers")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


HYPER = ("--hyper", "--hyper_hidden_size", "32", "--hyper_context_dim", "16", "--hyper_head_rank", "8")


def train(model, output_dir, *extra: str):
    from hf_egt.apps.train_diffusion import main, parse_args

    argv = ["--model_name_or_path", model, "--output_dir", str(output_dir), "--seed", "3"]
    argv += ["--save_steps", "0", "--learning_rate", "3e-3", *extra]
    return main(parse_args(argv))


def fixed_digits_batch(n: int = 32):
    """The first `n` images of digits-imbalanced in [-1, 1] with their labels, and fixed noise and timesteps."""
    from hf_egt.integrations.diffusion.data import digits_imbalanced_arrays

    pixels, labels = digits_imbalanced_arrays()
    images = torch.from_numpy(pixels[:n]).float().div(127.5).sub(1).unsqueeze(1)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(images.shape, generator=generator)
    timesteps = torch.randint(0, 100, (n,), generator=generator)
    return images, torch.from_numpy(labels[:n]), noise, timesteps


@pytest.fixture(scope="module")
def unet_folder(tmp_path_factory):
    return save_tiny_unet2d(tmp_path_factory.mktemp("cc-unet"), class_conditional=True)


@pytest.fixture(scope="module")
def hyper_run(unet_folder, tmp_path_factory):
    """10 --hyper steps with PLE (λ = 0.1, 2 DDIM steps per sampled batch) on the class-conditional tiny UNet."""
    output_dir = tmp_path_factory.mktemp("hyper-out")
    extra = (*DIGITS, *HYPER, "--lora_conv", "--per_device_train_batch_size", "32", "--max_steps", "10")
    extra += ("--objective", "minmax", "--noise_buckets", "2", "--ple_weight", "0.1", "--ple_inference_steps", "2")
    return train(unet_folder, output_dir, *extra), output_dir


def denoising_loss(model, images, labels, noise, timesteps, **kwargs) -> float:
    from diffusers import DDPMScheduler

    noisy = DDPMScheduler(num_train_timesteps=100).add_noise(images, noise, timesteps)
    with torch.no_grad():
        return per_example_mse(model(noisy, timesteps, class_labels=labels, **kwargs).sample, noise).mean().item()


def test_hyper_training_lowers_the_denoising_loss_on_a_fixed_batch(hyper_run, unet_folder):
    """The untrained HyperLoRAModel is the base UNet (B's head starts at zero); 10 steps lower the loss on a fixed
    batch, whether the set is the batch itself or the exported context."""
    from diffusers import UNet2DModel

    result, _ = hyper_run
    images, labels, noise, timesteps = fixed_digits_batch()
    base = UNet2DModel.from_pretrained(unet_folder, subfolder="unet").eval()
    before = denoising_loss(base, images, labels, noise, timesteps)
    model = result.model.train()
    after_batch_set = denoising_loss(model, images, labels, noise, timesteps, context_set={"sample": images})
    after_context = denoising_loss(model.eval(), images, labels, noise, timesteps)
    assert after_batch_set < 0.9 * before, (before, after_batch_set)
    assert after_context < 0.9 * before, (before, after_context)


def test_ple_is_logged_finite_and_positive(hyper_run):
    result, _ = hyper_run
    values = [logs["ple"] for logs in result.log_history]
    assert len(values) == 10 and all(torch.isfinite(torch.tensor(values)))
    assert max(values) > 0  # H(Y) != H(X) once B is no longer zero
    assert all(logs["loss"] >= logs["ple"] for logs in result.log_history)  # the loss includes the PLE term


def test_exported_lora_loads_with_plain_peft_and_reproduces_the_hyper_model(hyper_run, unet_folder):
    from diffusers import UNet2DModel
    from peft import PeftModel

    result, output_dir = hyper_run
    loaded = PeftModel.from_pretrained(UNet2DModel.from_pretrained(unet_folder, subfolder="unet"), str(output_dir))
    plain = UNet2DModel.from_pretrained(unet_folder, subfolder="unet").eval()
    sample, timesteps, labels = torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 90]), torch.tensor([2, 5, 7])
    with torch.no_grad():
        expected = result.model.eval()(sample, timesteps, class_labels=labels).sample
        reloaded = loaded.eval()(sample, timesteps, class_labels=labels).sample
        torch.testing.assert_close(reloaded, expected, atol=1e-4, rtol=0)
        assert (plain(sample, timesteps, class_labels=labels).sample - expected).abs().max() > 1e-3
    assert (output_dir / "group_objective.safetensors").exists()
    assert json.loads((output_dir / "adapter_config.json").read_text())["base_model_name_or_path"] == unet_folder
    assert "hypernetwork" in (output_dir / "README.md").read_text()


def test_saved_hypernetwork_reloads_with_its_context(hyper_run, unet_folder):
    from diffusers import DDIMScheduler, UNet2DModel

    from hf_egt.integrations.hyper import HyperLoRAModel
    from hf_egt.integrations.hyper.sampling import DiffusionSampler

    result, output_dir = hyper_run
    unet = UNet2DModel.from_pretrained(unet_folder, subfolder="unet")
    sampler = DiffusionSampler(DDIMScheduler(num_train_timesteps=100), 2)  # the config has ple_weight > 0
    reloaded = HyperLoRAModel.from_pretrained(unet, output_dir / "hypernetwork", ple_sampler=sampler).eval()
    torch.testing.assert_close(reloaded._context, result.model._context)
    sample, timesteps, labels = torch.randn(2, 1, 8, 8), torch.tensor([10, 80]), torch.tensor([0, 8])
    with torch.no_grad():
        torch.testing.assert_close(
            reloaded(sample, timesteps, class_labels=labels).sample,
            result.model.eval()(sample, timesteps, class_labels=labels).sample,
        )
    assert not [p.name for p in output_dir.rglob("*") if p.suffix in (".bin", ".pt", ".pkl", ".pth")]


def test_hyper_resume_is_exact(unet_folder, tmp_path):
    """4 steps straight == 2 steps, checkpoint (safetensors hypernetwork), resume, 2 steps."""
    common = (
        *DIGITS,
        *HYPER,
        "--per_device_train_batch_size",
        "4",
        "--gradient_accumulation_steps",
        "2",
        "--noise_buckets",
        "2",
    )
    straight = train(unet_folder, tmp_path / "straight", *common, "--max_steps", "4")
    train(unet_folder, tmp_path / "split", *common, "--max_steps", "2", "--save_steps", "2")
    assert (tmp_path / "split" / "checkpoint-2" / "model.safetensors").exists()
    resumed = train(unet_folder, tmp_path / "split", *common, "--max_steps", "4", "--resume_from_checkpoint", "latest")
    assert resumed.global_step == 4
    first, second = straight.model.state_dict(), resumed.model.state_dict()
    assert first.keys() == second.keys() and all(k.startswith("hypernetwork.") for k in first)
    for key in first:
        torch.testing.assert_close(first[key], second[key], msg=key)
    torch.testing.assert_close(straight.group_objective.weights, resumed.group_objective.weights)


def test_stable_diffusion_hyper_lora_loads_with_plain_diffusers(tmp_path):
    from diffusers import StableDiffusionPipeline

    model = save_tiny_stable_diffusion(tmp_path / "sd")
    data = save_tiny_caption_dataset(tmp_path / "data")
    extra = ("--dataset", data, "--resolution", "16", "--caption_column", "text", "--group_column", "group")
    extra += (*HYPER, "--per_device_train_batch_size", "4", "--max_steps", "2", "--ple_weight", "0.1")
    extra += ("--ple_inference_steps", "2")
    result = train(model, tmp_path / "out", *extra)
    assert all(logs["ple"] >= 0 for logs in result.log_history)
    assert "from a set of 8 training images" in (tmp_path / "out" / "README.md").read_text()  # the whole dataset
    pipeline = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    sample, timesteps, hidden = torch.randn(2, 4, 8, 8), torch.tensor([3, 70]), torch.randn(2, 16, 32)
    with torch.no_grad():
        pipeline.load_lora_weights(str(tmp_path / "out"))
        after = pipeline.unet(sample, timesteps, encoder_hidden_states=hidden).sample
        expected = result.model.eval()(sample, timesteps, encoder_hidden_states=hidden).sample
    torch.testing.assert_close(after, expected, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "argv, message",
    [
        (("--ple_weight", "0.1"), "--ple_weight only applies to a hypernetwork: add --hyper"),
        (("--hyper_hidden_size", "8"), "--hyper_hidden_size only applies"),
        (("--hyper", "--ple_weight", "-1"), "--ple_weight must be >= 0"),
        (("--hyper", "--ple_every", "0"), "--ple_every must be >= 1"),
    ],
)
def test_bad_hyper_arguments_name_the_argument(argv, message, capsys):
    from hf_egt.apps.train_diffusion import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model_name_or_path", "x", "--dataset", "digits-imbalanced", *argv])
    assert message in capsys.readouterr().err


def test_hyper_on_a_unet_without_attention_names_lora_conv(tmp_path):
    no_attention = save_tiny_unet2d(tmp_path / "plain", class_conditional=False, attention=False)
    with pytest.raises(ValueError, match="no attention layers.*--lora_conv"):
        train(no_attention, tmp_path / "out", *DIGITS, "--hyper", "--max_steps", "1")


def test_diffusion_sampler_conditions_on_the_real_batch_and_passes_it_on():
    """Y is sampled with the real batch's class labels (each UNet call gets them) and returned with them."""
    from diffusers import DDIMScheduler

    from hf_egt.integrations.hyper.sampling import DiffusionSampler

    calls = []

    class RecordingUNet(torch.nn.Module):
        def forward(self, sample, timestep, class_labels=None):
            calls.append(class_labels)
            return type("Output", (), {"sample": torch.zeros_like(sample)})()

    labels = torch.tensor([3, 1, 4])
    sampler = DiffusionSampler(DDIMScheduler(num_train_timesteps=10), num_inference_steps=3)
    args, kwargs = sampler(RecordingUNet(), (), {"sample": torch.randn(3, 1, 4, 4), "class_labels": labels})
    assert args == () and kwargs["sample"].shape == (3, 1, 4, 4)
    assert kwargs["class_labels"] is labels
    assert len(calls) == 3 and all(call is labels for call in calls)
    _, unconditional = sampler(RecordingUNet(), (), {"sample": torch.randn(2, 1, 4, 4), "class_labels": None})
    assert set(unconditional) == {"sample"} and calls[-1] is None
