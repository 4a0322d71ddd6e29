"""ADM-G ImageNet 256x256, OpenAI's published weights: `256x256_diffusion.pt` (guided-diffusion).

Dhariwal & Nichol 2021, Table 4 (and the abstract): the class-conditional ADM with classifier
guidance, scale s = 1.0 and 250 respaced DDPM steps, reaches FID 4.59 on 50K samples (5.44 with
25 DDIM steps); the guided-diffusion README's results table lists FID 4.59, precision 0.82,
recall 0.52. The architecture is the README's MODEL_FLAGS: `--attention_resolutions 32,16,8
--class_cond True --diffusion_steps 1000 --image_size 256 --learn_sigma True --noise_schedule
linear --num_channels 256 --num_head_channels 64 --num_res_blocks 2 --resblock_updown True
--use_fp16 True --use_scale_shift_norm True` (channel_mult 1,1,2,2,4,4, the 256x256 default;
the legacy attention order; a label table without a null class). The float16 file loads into
float32 parameters. Guidance reads the 256x256 classifier imported into eval.classifier_workdir
(configs/published/adm_classifier256.py). Weights:
https://openaipublic.blob.core.windows.net/diffusion/jul-2021/256x256_diffusion.pt; how to import
and sample: docs/published_models.md. Sampling needs no data set; --mode=eval reads the
validation split only for the FID reference (eval.reference_stats spares it).
"""

from configs import default

CHECKPOINT = "256x256_diffusion.pt"


def get_config():
    """Returns the config of OpenAI's ADM ImageNet 256x256 (class-conditional) for sampling."""
    config = default.get_config()
    config.data.dataset = "imagenet2012"
    config.data.image_size = 256
    config.data.num_classes = 1000
    config.data.eval_split = "validation"

    config.model.class_cond = True
    unet = config.model.unet
    unet.ch = 256
    unet.channel_mult = (1, 1, 2, 2, 4, 4)
    unet.num_res_blocks = 2
    unet.attention_resolutions = (32, 16, 8)
    unet.num_head_channels = 64
    unet.resblock_updown = True
    unet.use_scale_shift_norm = True
    unet.dropout = 0.0
    unet.use_new_attention_order = False
    unet.null_class = False

    config.diffusion.schedule = "linear"
    config.diffusion.num_timesteps = 1000
    config.diffusion.var_type = "learned_range"
    config.diffusion.loss_type = "hybrid"

    config.eval.evaluators = ("samples",)
    config.eval.batch_size = 16
    config.eval.num_samples = 50_000
    config.eval.sampler = "ddpm"
    config.eval.sample_steps = 250
    config.eval.classifier_scale = 1.0
    config.eval.classifier_workdir = "workdirs/adm_classifier256"
    return config
