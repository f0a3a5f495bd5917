"""Record what Hugging Face transformers does with a GGUF file: the fixture of tests/test_gguf.py.

    python tools/record_reference.py --gguf models/SmolLM2-135M-Instruct.Q4_1.gguf --out tests/fixtures/smollm2_reference.json

Run it once, in a venv that has transformers, tokenizers, gguf and accelerate (none of them is a
dependency of this project; this script imports nothing from it). tests/test_gguf.py checks this
project's GGUF loader, tokenizer and chat template against the fixture.

What it records: transformers' token ids for texts that cover ordinary text, whitespace runs,
digits, code and non-Latin scripts (with split_special_tokens=True: typed special tokens stay
text, as this project's encode keeps them); the ids of SmolLM2's own pre-tokenizer (each digit
split off first, then GPT-2's byte-level regex, as its tokenizer.json and llama.cpp's "smollm"
do) where transformers' GGUF converter, which builds plain GPT-2 splitting, differs;
apply_chat_template's ids for the file's own chat template; and the float32 model's greedy
continuation and last-position top-5 logits for a ChatML prompt.
"""

import argparse
import json
import os

TEXTS = [('english_simple', 'Hello world'),
 ('english_sentence', 'The quick brown fox jumps over the lazy dog.'),
 ('english_question', "What is the capital of France? It's Paris, of course!"),
 ('contractions', "I'm sure you don't know, but they'll come. IT'S TRUE, we've, she'd, you're."),
 ('ws_double_triple', 'Hello  world   again    four'),
 ('ws_leading', '   leading spaces'),
 ('ws_trailing', 'trailing spaces   '),
 ('ws_tabs', 'tab\tseparated\t\tvalues\t'),
 ('ws_newlines', 'line one\n\n\nline two\nline three'),
 ('ws_crlf', 'windows\r\nline\r\n\r\nend'),
 ('ws_space_before_newline', 'space before newline \nand two  \n\n end'),
 ('digits', '12345678 3.14159 1,000,000 year 2024 and 7 or 42'),
 ('code_python',
  'def add(a, b):\n'
  '    """Add two numbers."""\n'
  '    result = a + b\n'
  '    return result\n'
  '\n'
  '\n'
  'print(add(2, 3))\n'),
 ('code_json', '{"name": "Mira", "age": 12, "tags": ["lantern", "story"], "ok": true}'),
 ('code_c', 'for (int i = 0; i < n; ++i) { a+=b; if (x != y && z >= 0) { return -1; } }'),
 ('chinese', '我喜欢读书，也喜欢写故事。'),
 ('japanese', 'こんにちは、世界。カタカナと漢字です。'),
 ('korean', '안녕하세요, 세계! 한국어 문장입니다.'),
 ('arabic', 'مرحبا بالعالم، هذه جملة عربية.'),
 ('hindi', 'नमस्ते दुनिया, यह हिंदी वाक्य है।'),
 ('cyrillic', 'Привет, мир! Это русское предложение.'),
 ('greek', 'Γειά σου Κόσμε, αυτή είναι ελληνική πρόταση.'),
 ('hebrew', 'שלום עולם, זה משפט בעברית.'),
 ('emoji', 'I love pizza 🍕! Family: 👨\u200d👩\u200d👧\u200d👦 flag: 🇫🇷 thumbs: 👍🏽 heart: ❤️'),
 ('accents', 'café naïve façade résumé Ångström über'),
 ('special_literal', 'Text with <|im_start|>user\nhi<|im_end|> and <|endoftext|> inside.'),
 ('special_only', '<|im_start|><|endoftext|>'),
 ('special_other_added', '<filename>main.py<file_sep>x = 1<jupyter_code> <empty_output>'),
 ('long_mixed',
  'In 2024, Mira (age 12) found a lantern at 3:45 p.m. near the old café. She said: "I\'m not afraid!" — but '
  'her heart raced.\n'
  '\n'
  "The lantern's label read `LX-9000`; its price was $19.99 (≈ €18,50). Later, she wrote in her diary: "
  '今日はいい日だった 😊.\n'
  '    def glow(x): return x ** 2  # indented code\n'
  'Temperatures: -5°C to +30°C; ratio 1:1000; e-mail: mira@example.com; URL https://example.org/a?b=c&d=e.'),
 ('empty', ''),
 ('single_space', ' '),
 ('single_newline', '\n')]
PRE_TOKENIZER_TEXTS = ["x  12", "    return 1", "a = [\n    1,\n    2]", "total:   42 items", "\t\t7"]
CHATS = [('user_genprompt', [{'content': 'Write a short story about Mira and a lantern.', 'role': 'user'}], True),
 ('system_user_genprompt',
  [{'content': 'You are a friendly storyteller. Keep answers short.', 'role': 'system'},
   {'content': 'Write a short story about Mira and a lantern.', 'role': 'user'}],
  True),
 ('user_assistant',
  [{'content': 'Write a short story about Mira and a lantern.', 'role': 'user'},
   {'content': 'Sure! Here is a story:\n\nMira found a lantern.', 'role': 'assistant'}],
  False),
 ('system_user_assistant',
  [{'content': 'You are a friendly storyteller. Keep answers short.', 'role': 'system'},
   {'content': 'Write a short story about Mira and a lantern.', 'role': 'user'},
   {'content': 'Sure! Here is a story:\n\nMira found a lantern.', 'role': 'assistant'}],
  False),
 ('user_whitespace_genprompt', [{'content': '  Summarize this:\n\nThe cat sat.  ', 'role': 'user'}], True),
 ('assistant_trailing_newline',
  [{'content': 'Say hi.', 'role': 'user'}, {'content': 'Hi there!\n', 'role': 'assistant'}],
  False),
 ('multi_turn_genprompt',
  [{'content': 'You are a friendly storyteller. Keep answers short.', 'role': 'system'},
   {'content': 'Hi!', 'role': 'user'},
   {'content': 'Hello! How can I help?', 'role': 'assistant'},
   {'content': 'Write a short story about Mira and a lantern.', 'role': 'user'}],
  True)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", required=True, help="the GGUF file (e.g. models/SmolLM2-135M-Instruct.Q4_1.gguf)")
    parser.add_argument("--out", required=True, help="the fixture to write (JSON)")
    args = parser.parse_args()
    import torch                                  # after the flags: --help needs none of these
    import transformers
    from tokenizers import pre_tokenizers
    os.environ["HF_HUB_OFFLINE"] = "1"
    folder, name = os.path.split(os.path.abspath(args.gguf))
    tok = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    cases = []
    for case_name, text in TEXTS:
        ids = tok.encode(text, add_special_tokens=False, split_special_tokens=True)
        cases.append({"name": case_name, "text": text, "ids": ids, "decoded": tok.decode(ids)})
    chats = [{"name": chat_name, "messages": messages, "add_generation_prompt": generation_prompt,
              "ids": list(tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=generation_prompt,
                                                  return_dict=True)["input_ids"])}
             for chat_name, messages, generation_prompt in CHATS]
    as_in_gguf = [tok.encode(text, add_special_tokens=False) for text in PRE_TOKENIZER_TEXTS]
    tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    pre_cases = [{"text": text, "ids_transformers_gguf": before,
                  "ids_digits_then_bytelevel": tok.encode(text, add_special_tokens=False)}
                 for text, before in zip(PRE_TOKENIZER_TEXTS, as_in_gguf)]
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    prompt = chats[0]["ids"]
    with torch.no_grad():
        logits = model(torch.tensor([prompt])).logits[0, -1]
        new = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             do_sample=False, max_new_tokens=24, min_new_tokens=24)[0, len(prompt):]
    top = logits.topk(5)
    fixture = {"about": "written by tools/record_reference.py from " + name,
               "versions": {"transformers": transformers.__version__, "torch": torch.__version__},
               "tokenizer_cases": cases, "smollm2_pre_tokenizer_cases": pre_cases, "chat": {"cases": chats},
               "model": {"greedy_generate": {"input_ids": prompt, "new_ids": new.tolist()},
                         "last_logits_top5": {"ids": top.indices.tolist(), "values": top.values.tolist()}}}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(fixture, f, ensure_ascii=False, indent=1)


if __name__ == "__main__":
    main()
