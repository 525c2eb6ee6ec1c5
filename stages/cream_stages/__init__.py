"""The stages of the CREAM pipeline: `python -m cream_stages <stage> --request <uri>`.

Contract and IO: contract.py (requests, manifest), artifacts.py (local and s3:// files),
runner.py (the entrypoint around every stage), errors.py.
Stages, one module each: sft, sample, score, consistency, dpo, evaluate.
Shared ML pieces: models.py (model URIs and loading), tiny_model.py (builtin://tiny-llama),
data.py (data files, builtin://data/...), tokenization.py (the one tokenisation of a
conversation), logprobs.py (s_M), losses.py (CREAM's DPO loss), consistency_math.py,
training.py, generation.py, eval_tasks.py and answers.py (evaluation formats and parsing).
GPU backends, imported only when a request asks for them: vllm_backend.py, deepspeed_backend.py.

Importing the package imports nothing heavy: the operator (no torch) uses contract and artifacts.
"""
