import torch
torch.set_num_threads(1)
from defenses.sparse_coding.train import TrainConfig, train
cfg = TrainConfig(T=15, epochs=0.5, peak_lr=0.01, classifier_lr_scale=0.5, warmup_frac=0.2,
                  warm_start='/work/shared/reference/resnet32_behind_frontend_T15.pt',
                  ckpt_every=50, eval_every=100, n_val=500, n_test=1000, threads=1, fast=True, progress=False)
train(cfg, 'defenses/sparse_coding/weights/run_T15', resume=True, log=lambda s: print(s, flush=True))
