#!/usr/bin/env python3
"""Checks an exported ms-swift grounding dataset (`EXPORT_DIR/swift.jsonl`) by running ms-swift's own code on it.

    swift_templates.py EXPORT_DIR

Run it with the Python that has ms-swift installed (ms-swift 4.6, transformers 5, qwen-vl-utils 0.0.14, torchvision):
no GPU, no hub and no model download are needed.

What ms-swift runs here, unmodified:
1. Loading: `swift.dataset.load_dataset` (swift/dataset/loader.py) on the local jsonl path, with `strict=True` so that a
   malformed record raises instead of being dropped. It goes through `AutoPreprocessor` -> `MessagesPreprocessor` and
   `RowPreprocessor.batched_preprocess` (`_check_objects`, `_check_messages`, `_cast_mm_data`) and
   `RowPreprocessor.remove_useless_columns` (swift/dataset/preprocessor/core.py). The check fails if a record is
   dropped or if the loaded messages are not the exported ones, in the same order.
2. Processors: for each model a tiny processor is written from scratch into a temporary folder (a byte-level BPE
   tokenizer, made with `tokenizers`, holding the model's special tokens at the model's own ids; transformers'
   image/video processor classes; a config.json) and loaded with `swift.model.get_processor(dir, model_type=...)`
   (swift/model/register.py, `get_model_processor` -> the model's loader, e.g. `Qwen2VLLoader.get_processor`, which
   also applies ms-swift's `patch_qwen_vl_utils`). The templates come from
   `swift.template.get_template(processor, template_type=...)` (swift/template/register.py).
3. Encoding: every record, in train mode, through `Template.encode(row, return_template_inputs=True)` and back to
   text with `Template.safe_decode`, as ms-swift's docs do at the end of "Grounding" in
   docs/source_en/Customization/Custom-dataset.md. On that path ms-swift itself loads the image
   (`Template._load_image`, `ROOT_IMAGE_DIR`), resizes it (qwen-vl-utils' `fetch_image` in
   `Qwen2VLTemplate.replace_tag`), scales the boxes (`Template.normalize_bbox`, swift/template/base.py) and writes
   them (`replace_ref`/`replace_bbox` of `Qwen2VLTemplate`, swift/template/templates/qwen.py, and of
   `Internvl2Template`, swift/template/templates/internvl.py).

Templates checked, and how their text is read back to fractions of the image as stored:
- qwen2_vl and qwen3_vl (`norm_bbox = 'norm1000'`, `QWENVL_BBOX_FORMAT=legacy`):
  `<|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>`, values / 1000;
- qwen2_5_vl (`norm_bbox = 'none'`): the same tokens in absolute pixels of the image as ms-swift resized it; that
  size is read from what the template produced (`image_grid_thw` x the image processor's `patch_size`, and checked
  against the resized image in `template_inputs`), not recomputed;
- internvl2_5 (`norm_bbox = 'norm1000'`): `<ref>phrase</ref><box>[[x1, y1, x2, y2]]</box>`, values / 1000.

For each record and template: the boxes read back, in order, equal `objects.bbox` within one quantization step
(1/1000, or 1/side of the resized image) plus 1e-6; the phrases read back, in order, equal `objects.ref`; the text
holds exactly one image and no `<image>`, `<ref-object>` or `<bbox>` left over (ms-swift leaves a placeholder as
text when `objects` has fewer values than the text has placeholders, and ignores surplus values). Prints one line
per template and exits 1, naming the record and the template, on the first mismatch.

Most of the time goes to InternVL's 448-pixel tiling (`transform_image`, up to 13 tiles an image): about 0.6 s a
record for the four templates on two CPU cores. ms-swift's own `MAX_NUM` variable (tiles per image) does not change
InternVL's boxes and may be lowered to go faster.
"""
import copy
import json
import os
import re
import sys
import tempfile
import time
import warnings

TOLERANCE = 1e-6
QWEN_SPECIALS = [  # Qwen2/2.5/3-VL's special tokens at their ids (Qwen2VLTemplate.image_token_id = 151655).
    '<|endoftext|>', '<|im_start|>', '<|im_end|>', '<|object_ref_start|>', '<|object_ref_end|>', '<|box_start|>',
    '<|box_end|>', '<|quad_start|>', '<|quad_end|>', '<|vision_start|>', '<|vision_end|>', '<|vision_pad|>',
    '<|image_pad|>', '<|video_pad|>'
]
QWEN_FIRST_SPECIAL_ID = 151643
INTERNVL_SPECIALS = ['<img>', '</img>', '<IMG_CONTEXT>', '<quad>', '</quad>', '<ref>', '</ref>', '<box>', '</box>']

# A stand-in for InternVL's remote-code `configuration_internvl_chat.py`: ms-swift's loader reads the config with
# `AutoConfig.from_pretrained(..., trust_remote_code=True)` but only needs the model type from it.
INTERNVL_CONFIG_PY = '''from transformers import PretrainedConfig


class InternVLChatConfig(PretrainedConfig):
    model_type = 'internvl_chat'
'''


class Mismatch(Exception):
    pass


def fail(message):
    print(f'FAIL: {message}', file=sys.stderr)
    sys.exit(1)


def setup_environment(export_dir, scratch):
    """Offline, with ms-swift's caches in the scratch folder and image paths resolved against EXPORT_DIR."""
    os.environ.update({
        'HF_HUB_OFFLINE': '1',
        'HF_DATASETS_OFFLINE': '1',
        'TRANSFORMERS_OFFLINE': '1',
        'HF_HOME': os.path.join(scratch, 'hf'),
        'MODELSCOPE_CACHE': os.path.join(scratch, 'modelscope'),  # swift's dataset map cache (get_cache_dir())
        'ROOT_IMAGE_DIR': export_dir,  # swift/template/vision_utils.py `_check_path`
        'QWENVL_BBOX_FORMAT': 'legacy',  # the default of Qwen2VLTemplate.init_env_args, made explicit
        'TOKENIZERS_PARALLELISM': 'false',
        'HF_DATASETS_DISABLE_PROGRESS_BARS': '1',
    })
    # Quieter by default: ms-swift warns about trust_remote_code and the (unused) video reader decord.
    os.environ.setdefault('LOG_LEVEL', 'ERROR')  # swift/utils/logger.py
    os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')
    warnings.filterwarnings('ignore', category=FutureWarning)
    os.chdir(export_dir)  # `_check_path` tries the working folder first


def byte_level_tokenizer(specials, first_special_id):
    """A byte-level BPE without merges whose added special tokens start at `first_special_id`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    # Fillers that no text can reach (there are no merges), so that the specials land at the model's ids.
    for i in range(len(vocab), first_special_id):
        vocab[f'<unreachable_{i}>'] = i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(specials)
    for i, token in enumerate(specials):
        assert tok.token_to_id(token) == first_special_id + i, token
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token='<|im_end|>',
        pad_token='<|endoftext|>',
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 20)


def write_model_dirs(root):
    """Tiny local model folders, one per template: {template_type: (folder, swift model_type)}."""
    import transformers
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLProcessor, Qwen2VLConfig, Qwen2VLImageProcessor,
                              Qwen2VLProcessor, Qwen2VLVideoProcessor, Qwen3VLConfig, Qwen3VLProcessor,
                              Qwen3VLVideoProcessor)
    qwen_tokenizer = byte_level_tokenizer(QWEN_SPECIALS, QWEN_FIRST_SPECIAL_ID)
    dirs = {}
    qwen_models = [
        ('qwen2_vl', Qwen2VLConfig, Qwen2VLProcessor, {}, Qwen2VLVideoProcessor),
        ('qwen2_5_vl', Qwen2_5_VLConfig, Qwen2_5_VLProcessor, {}, Qwen2VLVideoProcessor),
        # Qwen3-VL's published preprocessor_config.json has 16-pixel patches (a 32-pixel resize factor).
        ('qwen3_vl', Qwen3VLConfig, Qwen3VLProcessor, {'patch_size': 16}, Qwen3VLVideoProcessor),
    ]
    for name, config_cls, processor_cls, image_kwargs, video_cls in qwen_models:
        folder = os.path.join(root, name)
        processor = processor_cls(
            image_processor=Qwen2VLImageProcessor(**image_kwargs), tokenizer=qwen_tokenizer,
            video_processor=video_cls(**image_kwargs))
        processor.save_pretrained(folder)
        config = config_cls()
        config.architectures = [config_cls.__name__.replace('Config', 'ForConditionalGeneration')]
        config.save_pretrained(folder)
        dirs[name] = (folder, name)

    folder = os.path.join(root, 'internvl2_5')
    os.makedirs(folder)
    byte_level_tokenizer(QWEN_SPECIALS + INTERNVL_SPECIALS, QWEN_FIRST_SPECIAL_ID).save_pretrained(folder)
    with open(os.path.join(folder, 'configuration_internvl_chat.py'), 'w') as f:
        f.write(INTERNVL_CONFIG_PY)
    with open(os.path.join(folder, 'config.json'), 'w') as f:
        json.dump({
            'model_type': 'internvl_chat',
            'architectures': ['InternVLChatModel'],
            'auto_map': {'AutoConfig': 'configuration_internvl_chat.InternVLChatConfig'},
            'torch_dtype': 'bfloat16',
            'transformers_version': transformers.__version__,
        }, f)
    dirs['internvl2_5'] = (folder, 'internvl_chat')
    return dirs


def read_records(export_dir):
    path = os.path.join(export_dir, 'swift.jsonl')
    records = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                records.append((n, json.loads(line)))
    return path, records


def record_name(n, record):
    images = record.get('images') or []
    return f'swift.jsonl line {n} ({images[0] if images else "no image"})'


def load_with_swift(path, records):
    """ms-swift's own loading; every record must come through, unchanged and in order."""
    from swift.dataset import load_dataset
    try:
        train, val = load_dataset([path], strict=True, load_from_cache_file=False, num_proc=1)
    except Exception as e:
        fail(f'ms-swift could not load {path}: {type(e).__name__}: {e}')
    assert val is None
    if len(train) != len(records):
        fail(f'ms-swift loaded {len(train)} of the {len(records)} records of {path}')
    rows = []
    for (n, record), row in zip(records, train):
        row = dict(row)
        if row['messages'] != record['messages']:
            fail(f'{record_name(n, record)}: ms-swift changed the messages from {record["messages"]} '
                 f'to {row["messages"]}')
        paths = [image['path'] for image in row.get('images') or []]
        if paths != record.get('images'):
            fail(f'{record_name(n, record)}: ms-swift loaded other images: {paths}')
        rows.append(row)
    return rows


def qwen_reader(text):
    """Qwen2-VL's legacy grounding tokens (Qwen2VLTemplate.replace_ref/replace_bbox, `_get_bbox_str`)."""
    refs = re.findall(r'<\|object_ref_start\|>(.*?)<\|object_ref_end\|>', text, re.S)
    boxes = []
    for body in re.findall(r'<\|box_start\|>(.*?)<\|box_end\|>', text, re.S):
        points = re.fullmatch(r'\((-?\d+),(-?\d+)\)(?:,\((-?\d+),(-?\d+)\))?', body)
        if points is None:
            raise Mismatch(f'unreadable box {body!r}')
        boxes.append([int(v) for v in points.groups() if v is not None])
    return refs, boxes


def internvl_reader(text):
    """InternVL's grounding tags (Internvl2Template.replace_ref/replace_bbox: `<box>[{bbox}]</box>`)."""
    refs = re.findall(r'<ref>(.*?)</ref>', text, re.S)
    boxes = []
    for body in re.findall(r'<box>(.*?)</box>', text, re.S):
        values = re.fullmatch(r'\[\[(-?\d+), (-?\d+)(?:, (-?\d+), (-?\d+))?\]\]', body)
        if values is None:
            raise Mismatch(f'unreadable box {body!r}')
        boxes.append([int(v) for v in values.groups() if v is not None])
    return refs, boxes


def qwen_frame(encoded, template):
    """The (width, height) that qwen2_5_vl's pixels refer to: the image as ms-swift resized it."""
    grid = encoded['image_grid_thw'].tolist()
    if len(grid) != 1:
        raise Mismatch(f'image_grid_thw has {len(grid)} images')
    patch = template.processor.image_processor.patch_size
    _, h, w = grid[0]
    width, height = w * patch, h * patch
    image = encoded['template_inputs'].images[0]
    if (image.width, image.height) != (width, height):
        raise Mismatch(f'image_grid_thw gives {width}x{height}, the resized image is {image.width}x{image.height}')
    return width, height


TEMPLATES = {
    # template_type: (reader, frame of the numbers, image open tag, image close tag)
    'qwen2_vl': (qwen_reader, lambda encoded, template: (1000, 1000), '<|vision_start|>', '<|vision_end|>'),
    'qwen2_5_vl': (qwen_reader, qwen_frame, '<|vision_start|>', '<|vision_end|>'),
    'qwen3_vl': (qwen_reader, lambda encoded, template: (1000, 1000), '<|vision_start|>', '<|vision_end|>'),
    'internvl2_5': (internvl_reader, lambda encoded, template: (1000, 1000), '<img>', '</img>'),
}


def check_record(template, reader, frame_of, image_tags, row, record):
    encoded = template.encode(copy.deepcopy(row), return_template_inputs=True)
    text = template.safe_decode(encoded['input_ids'])
    for tag in image_tags:
        if text.count(tag) != 1:
            raise Mismatch(f'{text.count(tag)} {tag} in the encoded text, not 1:\n{text}')
    if len(encoded['template_inputs'].images) != 1:
        raise Mismatch(f'{len(encoded["template_inputs"].images)} images encoded, not 1')
    for placeholder in ['<image>', '<ref-object>', '<bbox>']:
        if placeholder in text:
            raise Mismatch(f'{placeholder} left in the encoded text:\n{text}')
    refs, boxes = reader(text)
    objects = record.get('objects') or {}
    want_refs, want_boxes = objects.get('ref') or [], objects.get('bbox') or []
    if objects.get('bbox_type') != 'norm1' and want_boxes:
        raise Mismatch(f'bbox_type is {objects.get("bbox_type")!r}, not "norm1"')
    if refs != want_refs:
        raise Mismatch(f'phrases read back {refs}, objects.ref is {want_refs}:\n{text}')
    if len(boxes) != len(want_boxes):
        raise Mismatch(f'{len(boxes)} boxes read back, objects.bbox has {len(want_boxes)}:\n{text}')
    width, height = frame_of(encoded, template)
    for i, (got, want) in enumerate(zip(boxes, want_boxes)):
        if len(got) != len(want):
            raise Mismatch(f'box {i} read back as {got}, objects.bbox[{i}] is {want}')
        for j, (value, fraction) in enumerate(zip(got, want)):
            side = width if j % 2 == 0 else height
            if abs(value / side - fraction) > 1 / side + TOLERANCE:
                raise Mismatch(f'box {i} read back as {got} on {width}x{height} = '
                               f'{[round(v / (width if k % 2 == 0 else height), 6) for k, v in enumerate(got)]}, '
                               f'objects.bbox[{i}] is {want}:\n{text}')
    return len(boxes), len(refs)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    export_dir = os.path.abspath(sys.argv[1])
    started = time.time()
    with tempfile.TemporaryDirectory(prefix='swift_templates.') as scratch:
        setup_environment(export_dir, scratch)
        path, records = read_records(export_dir)
        if not records:
            fail(f'{path} holds no records')
        for n, record in records:
            for image in record.get('images') or []:
                if not os.path.isfile(os.path.join(export_dir, image)):
                    fail(f'{record_name(n, record)}: image {image} is not in {export_dir}')
        rows = load_with_swift(path, records)

        from swift.model import get_processor
        from swift.template import get_template
        for template_type, (folder, model_type) in write_model_dirs(os.path.join(scratch, 'models')).items():
            reader, frame_of, *image_tags = TEMPLATES[template_type]
            processor = get_processor(folder, model_type=model_type)
            template = get_template(processor, template_type=template_type)
            template.set_mode('train')
            n_boxes = n_refs = 0
            for (n, record), row in zip(records, rows):
                try:
                    boxes, refs = check_record(template, reader, frame_of, image_tags, row, record)
                except Mismatch as e:
                    fail(f'{template_type}: {record_name(n, record)}: {e}')
                except Exception as e:
                    fail(f'{template_type}: {record_name(n, record)}: ms-swift raised {type(e).__name__}: {e}')
                n_boxes += boxes
                n_refs += refs
            print(f'{template_type}: {len(rows)} records, {n_boxes} boxes, {n_refs} refs ok', flush=True)
    print(f'swift_templates: {len(rows)} records of {path} ok in {time.time() - started:.1f}s')


if __name__ == '__main__':
    main()
