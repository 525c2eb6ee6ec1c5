"""The stages of the CREAM pipeline: `python -m cream_stages <stage> --request <uri>`.

The stage API: contract.py (requests, results, the input error, the manifest, the stage table);
records.py (the files stages hand to each other); artifacts.py (local, s3:// and data: URIs);
runner.py (the launcher around every stage).
Stages, one module each: sft, sample, score, consistency, dpo, evaluate.
Inference backends, peers behind inference.py: infer_transformers.py, infer_vllm.py.
Training backends, peers behind training.py and its one loop (train_loop.py): train_torch.py,
train_deepspeed.py.
Shared ML pieces: models.py (model URIs, loading, saving), tiny_model.py (builtin://tiny-llama),
data.py (the user's data files, builtin://data/...), tokenization.py (the one tokenisation of a
conversation), logprobs.py (s_M), losses.py (CREAM's DPO loss), consistency_math.py,
eval_tasks.py and answers.py (evaluation formats and parsing).

Importing the package imports nothing heavy: the operator (no torch) uses contract and artifacts;
vLLM and DeepSpeed are imported only when a request asks for them.
"""
