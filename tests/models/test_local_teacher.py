"""LocalVLMTeacher on a real (tiny, randomly initialised) LLaVA saved to disk: loading, images, prompt, re-asks."""


import pytest

from models.teachers.base import TeacherConfigError
from models.teachers.local import LocalVLMTeacher
from models.teachers.prompt import PROMPT_VERSION
from tests.teacher_inputs import GOOD, one_step_episode

TOKENS_PER_IMAGE = 4  # (16 // 8) ** 2 patches + CLS - CLS ("default" feature selection)
# Plain words only: no section name, so random output can never parse as a trace.
WORDS = "USER: ASSISTANT: the a robot arm gripper red blue green block plate bowl table left right up down move grasp lift place".split()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A LLaVA (CLIP vision tower + Llama) with a word-level tokenizer and a chat template, via save_pretrained."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaImageProcessorPil,
        LlavaProcessor,
        PreTrainedTokenizerFast,
    )

    vocab = {w: i for i, w in enumerate(["<pad>", "<eos>", "<bos>", "<unk>", "<image>", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.decoder = decoders.WordPiece()  # joins words with spaces
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
                                        extra_special_tokens={"image_token": "<image>"})
    template = ("{% for m in messages %}{{ m['role'] | upper }}: {% for c in m['content'] %}"
                "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endfor %}"
                "{% if add_generation_prompt %}ASSISTANT: {% endif %}")
    processor = LlavaProcessor(image_processor=LlavaImageProcessorPil(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16}),
                               tokenizer=tokenizer, patch_size=8, vision_feature_select_strategy="default",
                               num_additional_image_tokens=1, chat_template=template)
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
                                       image_size=16, patch_size=8, projection_dim=16),
        text_config=LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=2),
        image_token_index=vocab["<image>"], image_seq_length=TOKENS_PER_IMAGE,
    )
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("models") / "tiny-llava"
    LlavaForConditionalGeneration(config).save_pretrained(d)
    processor.save_pretrained(d)
    return d


def test_random_model_runs_and_its_gibberish_is_reasked_then_recorded_as_failed(model_dir, monkeypatch):
    teacher = LocalVLMTeacher(str(model_dir), max_new_tokens=8, max_reasks=1, device="cpu")
    assert (teacher.name, teacher.model, teacher.prompt_version, teacher.needs_images) == ("local_tiny-llava", "tiny-llava", PROMPT_VERSION, True)
    seen = []
    generate = teacher._generate_text
    monkeypatch.setattr(teacher, "_generate_text", lambda inputs, **kw: seen.append(inputs) or generate(inputs, **kw))

    rec = teacher.annotate_step(one_step_episode(), 0)
    assert rec.status == "failed" and rec.trace is None and rec.attempts == 2 and len(seen) == 2
    assert "missing <Observation> section" in rec.error and rec.raw_text.strip()
    assert rec.usage["input_tokens"] > 0 and 0 < rec.usage["output_tokens"] <= 2 * 8
    ids = seen[0]["input_ids"][0].tolist()
    assert ids.count(teacher._processor.image_token_id) == 2 * TOKENS_PER_IMAGE  # both cameras reached the model
    assert tuple(seen[0]["pixel_values"].shape) == (2, 3, 16, 16)
    assert rec.usage["input_tokens"] == 2 * len(ids)


def test_valid_answer_after_a_malformed_one_becomes_a_trace(model_dir, monkeypatch):
    teacher = LocalVLMTeacher(str(model_dir), max_reasks=2, device="cpu")
    answers = iter(["<Observation>: only this", GOOD])
    monkeypatch.setattr(teacher, "_generate_text", lambda inputs, **kw: (next(answers), 100, 30))
    rec = teacher.annotate_step(one_step_episode(), 0)
    assert rec.status == "ok" and rec.attempts == 2 and rec.raw_text == GOOD and rec.error is None
    assert rec.trace["logical_steps"] == ["Move to the block", "Grasp it", "Place it on the plate"]
    assert rec.trace["sub_action"] == "Move the arm left."
    assert rec.usage == {"input_tokens": 200, "output_tokens": 60}


def test_missing_or_unloadable_directory_is_a_configuration_error(tmp_path):
    with pytest.raises(TeacherConfigError, match="does not exist"):
        LocalVLMTeacher(str(tmp_path / "no-such-model"))
    with pytest.raises(TeacherConfigError, match="not a loadable vision-language model"):
        LocalVLMTeacher(str(tmp_path))


def test_the_local_teacher_is_a_setting(model_dir):
    from models.teachers import TeacherConfig, make_teacher

    teacher = make_teacher(TeacherConfig(kind="local", local_path=str(model_dir), max_output_tokens=64))
    assert isinstance(teacher, LocalVLMTeacher) and teacher.max_new_tokens == 64
    with pytest.raises(TeacherConfigError, match="local_path"):
        make_teacher(TeacherConfig(kind="local"))
