"""Every diffax config field with a neutral default; experiment configs import this and override.

The defaults are improved-diffusion's (Nichol & Dhariwal 2021; the `model_and_diffusion_defaults`
and training defaults of openai/improved-diffusion): a 64x64 U-Net with ch 128, two residual blocks
per level, attention at 16 and 8 with 4 heads and scale-shift norm; T=1000 linear betas, eps
prediction with the fixed (large) variance and the simple loss; Adam at 1e-4 with EMA 0.9999.
`data.dataset` has no default: every experiment names its data.
"""

import ml_collections


def _unset(kind=str):
    """An unset field that --config.a.b=... can still set (a plain None field cannot be)."""
    return ml_collections.config_dict.placeholder(kind)


def get_config() -> ml_collections.ConfigDict:
    """Returns the default config (not runnable alone: data.dataset is unset)."""
    config = ml_collections.ConfigDict()
    config.seed = 0  # Seeds parameter init, the data order and the training RNG; in [0, 2**32).

    config.data = data = ml_collections.ConfigDict()
    data.dataset = (
        _unset()
    )  # A TFDS name (cifar10, imagenet_resized/64x64), "digits", "image_folder".
    data.data_dir = _unset()  # TFDS data_dir; unset uses ~/tensorflow_datasets.
    data.folder = _unset()  # image_folder: one subfolder per class, or flat.
    # Images are square; a dataset of another size is resized (the digits: to a multiple of 8,
    # which their score reads).
    data.image_size = 64
    data.resize_images = True  # image_folder: crop and resize other sizes (False: refuse).
    data.num_channels = 3  # 1 for grayscale (the digits), 3 for RGB.
    data.num_levels = 256  # Intensity levels: 256 for 8-bit images, 17 for the digits.
    data.num_classes = 0  # Classes of the labels; 0 for an unlabelled dataset.
    data.train_split = "train"  # TFDS split (spec: "train[:90%]") to train on.
    # TFDS split to report bits/dim on; an image folder has only "train" (every file): set "train"
    # or a slice of it there.
    data.eval_split = "test"
    data.random_flip = False  # Random horizontal flips.
    data.shuffle_buffer = 10_000  # tf.data shuffle buffer, in examples (positive).
    # A process's training examples stay decoded in memory after the first epoch when they fit
    # in this many MiB (the digits, CIFAR-10; not ImageNet); 0 decodes them every epoch.
    data.cache_mib = 1024
    data.skip_bad_images = False  # image_folder: skip (and count) undecodable files.
    # Byte tokens per caption (BOS + UTF-8 bytes + padding); 0: no captions. Digits: captions
    # written from the labels (diffax.datasets.captions).
    data.text_length = 0
    # Digits captions: False draws a new training template each time an image is read; True
    # keeps example i's one caption, fixed by (seed, i), as stored embeddings are.
    data.fixed_captions = False
    # Text embeddings computed outside diffax (CLIP, T5, ...), one .npz per split: a path with
    # "{split}" (diffax.text_embeddings documents the arrays); "" encodes captions in diffax.
    data.text_embeddings = ""

    # The model: what every backbone reads, then one section per part, each passed to its flax
    # module as keyword arguments (`unet.UNet(**config.model.unet)`), so a new hyperparameter is
    # one line here.
    config.model = model = ml_collections.ConfigDict()
    model.name = "unet"  # The backbone, a key of diffax.build.MODELS.
    model.class_cond = False  # Conditions on data labels (needs data.num_classes > 0).
    # Conditions on captions (needs data.text_length > 0): a byte-level transformer (model.text)
    # encodes them; the U-Net's attention blocks become LDM's SpatialTransformer (Rombach et al.
    # 2022, sec. 3.3), DiT blocks gain a cross-attention layer (PixArt-alpha, Chen et al. 2023).
    model.text_cond = False
    model.dtype = "float32"  # Compute dtype: "bfloat16" on accelerators; params stay float32.
    model.remat = False  # Activation checkpointing of the residual and attention blocks.

    model.unet = unet = ml_collections.ConfigDict()  # ADM's U-Net (diffax.models.unet.UNet).
    unet.ch = 128  # Base channel count (a multiple of 32 for GroupNorm).
    unet.channel_mult = (1, 2, 3, 4)  # Channel multiplier per level; each level halves H and W.
    unet.num_res_blocks = 2  # Residual blocks per resolution.
    unet.attention_resolutions = (16, 8)  # Resolutions (in pixels) with self-attention.
    unet.num_heads = 4  # Attention heads, when num_head_channels is -1.
    unet.num_head_channels = -1  # Channels per head; overrides num_heads when positive.
    unet.dropout = 0.0  # Dropout in the residual blocks.
    unet.resblock_updown = False  # BigGAN-style residual blocks for down/upsampling.
    unet.use_scale_shift_norm = True  # Adaptive group norm from the embedding (ADM).
    unet.fourier_features = ()  # Exponents n of sin/cos(2^n pi x) input channels (VDM).
    # q, k, v split before heads; False: heads first (improved-diffusion, most ADM checkpoints).
    unet.use_new_attention_order = True
    # A class-conditional label table with the null class of classifier-free guidance (row
    # data.num_classes); False for ADM's published checkpoints, which have none.
    unet.null_class = True
    unet.timestep_scale = 1.0  # The network embeds t * this (improved-diffusion: 1000 / T).

    # The noisy classifier (model.name = "noisy_classifier"): ADM's U-Net encoder with attention
    # pooling (Dhariwal & Nichol 2021, sec. 4; diffax.models.classifier.NoisyClassifier).
    model.classifier = classifier = ml_collections.ConfigDict()
    classifier.ch = 128  # Base channel count.
    classifier.channel_mult = (1, 2, 3, 4)  # Channel multiplier per level.
    classifier.num_res_blocks = 2  # Residual blocks per resolution.
    classifier.attention_resolutions = (16, 8)  # Resolutions (in pixels) with self-attention.
    classifier.num_heads = 4  # Attention heads, when num_head_channels is -1.
    classifier.num_head_channels = -1  # Channels per head; overrides num_heads when positive.
    classifier.dropout = 0.0  # Dropout in the residual blocks.
    classifier.resblock_updown = False  # BigGAN-style residual blocks for downsampling.
    classifier.use_scale_shift_norm = True  # Adaptive group norm from the embedding.
    classifier.use_new_attention_order = True  # False: heads first (ADM's classifiers).

    # The Diffusion Transformer (model.name = "dit"; Peebles & Xie 2023; diffax.models.dit.DiT).
    model.dit = dit = ml_collections.ConfigDict()
    dit.patch_size = 2  # Side of the square patches that become tokens; divides image_size.
    dit.hidden_size = 384  # Token width D (DiT-S; a multiple of 4 and of num_heads).
    dit.depth = 12  # Transformer blocks.
    dit.num_heads = 6  # Attention heads (DiT-S).
    dit.mlp_ratio = 4.0  # MLP hidden width as a multiple of hidden_size.

    # The byte-level text encoder (model.text_cond; diffax.models.text_encoder.TextEncoder).
    model.text = text = ml_collections.ConfigDict()
    text.width = 128  # Token width D of the context (data.text_embeddings: the stored one).
    text.depth = 2  # Transformer blocks.
    text.num_heads = 4  # Attention heads (divides width).
    # "learned" position table, "none", or "words" (none, and the first block reads each word
    # whole).
    text.positions = "learned"
    # The caption's mean token also joins the timestep embedding (DiT: adaLN's c), as Imagen's
    # pooled text embedding (Saharia et al. 2022, sec. 2.4); False: cross-attention only (LDM).
    text.pool = True

    # The KL autoencoder (model.name = "autoencoder_kl"; Rombach et al. 2022, the first stage;
    # diffax.models.autoencoder.AutoencoderKL).
    model.autoencoder = autoencoder = ml_collections.ConfigDict()
    autoencoder.block_out_channels = (128, 256, 512, 512)  # Widths per level (SD's); f = 2**(n-1).
    autoencoder.layers_per_block = 2  # Resnets per encoder level (the decoder has one more).
    autoencoder.z_channels = 4  # Latent channels.
    autoencoder.norm_num_groups = 32  # GroupNorm groups; divides every width.
    # The autoencoder's PatchGAN (training.disc_weight > 0; diffax.models.autoencoder).
    model.discriminator = discriminator = ml_collections.ConfigDict()
    discriminator.ndf = 64  # First conv's width.
    discriminator.num_layers = 3  # Stride-2 convs; patches are image_size / 2**layers - 2 wide.

    config.diffusion = diffusion = ml_collections.ConfigDict()
    diffusion.schedule = "linear"  # Beta schedule: "linear" or "cosine".
    diffusion.num_timesteps = 1000  # T of the training process.
    diffusion.mean_type = "eps"  # What the model predicts: "eps", "x0" or "v".
    # "fixed_small", "fixed_large", "learned" or "learned_range".
    diffusion.var_type = "fixed_large"
    # "mse" (alias "simple"), "rescaled_mse" ("hybrid"), "kl", "rescaled_kl" ("vlb").
    diffusion.loss_type = "mse"
    diffusion.timestep_sampler = "uniform"  # "uniform" or "loss_second_moment".
    # "discrete" (the chain above, integer t) or "continuous" (diffax.continuous, t in [0, 1]).
    diffusion.kind = "discrete"
    # Continuous: -log SNR schedule, one of diffax.continuous.SCHEDULES ("learned": VDM's network).
    diffusion.gamma_schedule = "linear_gamma"
    diffusion.gamma_min = -13.3  # Continuous: -log SNR at t = 0 (VDM).
    diffusion.gamma_max = 5.0  # Continuous: -log SNR at t = 1 (VDM).
    diffusion.schedule_hidden = 1024  # Continuous: width of the learned schedule's network (VDM).
    # Continuous training loss, one of diffax.continuous.WEIGHTINGS ("elbo": the bound itself).
    diffusion.weighting = "elbo"
    diffusion.min_snr_gamma = 5.0  # Continuous: the Min-SNR clamp (Hang et al. 2023).

    # Super-resolution by concatenation (SR3, Saharia et al. 2021; ADM's upsampler): the model
    # sees the image downsampled to low_res_size and upsampled back beside x_t, corrupted by noise
    # conditioning augmentation of level s (Ho et al. 2022, CDM sec. 3.2), s an input of the model.
    config.super_resolution = sr = ml_collections.ConfigDict()
    sr.low_res_size = 0  # Side of the conditioning images; 0: not a super-resolution model.
    sr.upsample_method = "linear"  # Conditioning upsampler: "nearest", "linear" or "cubic".
    sr.train_aug_max = 0.0  # Training draws s ~ U[0, train_aug_max] per example (0: none).
    sr.sample_aug_level = 0.0  # s at evaluation and sampling (a cascade's chosen level).
    # The model embeds s as an input (CDM); False: it has no such input (ADM's upsamplers), and
    # train_aug_max and sample_aug_level stay 0.
    sr.level_cond = True
    sr.base_workdir = _unset()  # --mode=sample: upsample this base model's samples (a cascade).

    # Inpainting (1 = known pixels): a mask-conditioned model sees [x0 * m, m] beside x_t and
    # trains on random masks (Saharia et al. 2022, Palette); RePaint (Lugmayr et al. 2022) fills
    # in with any other model at --mode=sample.
    config.inpainting = inpainting = ml_collections.ConfigDict()
    inpainting.mask_cond = False  # Train a mask-conditioned model (on train_masks).
    inpainting.train_masks = ("box", "half", "pixels")  # Kinds of diffax.inpainting.MASK_KINDS.
    inpainting.eval_mask = "bottom_half"  # The unknown part at eval and sampling (FIXED_MASKS).
    inpainting.repaint = False  # --mode=sample: inpaint eval_mask by RePaint with this model.
    # RePaint's jump length j (sec. 4.2; the paper's 10); at most half the sampling steps, else
    # no jump would happen.
    inpainting.repaint_jump = 10
    inpainting.repaint_resamplings = 10  # RePaint's resamplings r (the paper's 10); 1: none.

    config.training = training = ml_collections.ConfigDict()
    training.batch_size = 128  # Global batch, split over every device of every process.
    training.num_steps = 500_000  # Optimizer steps in total.
    training.learning_rate = 1e-4  # Peak AdamW learning rate (finite, > 0).
    training.warmup_steps = 0  # Linear warmup steps to the peak rate; at most num_steps.
    training.weight_decay = 0.0  # AdamW decoupled weight decay (>= 0).
    training.adam_b1 = 0.9  # Adam first-moment decay, in [0, 1).
    training.adam_b2 = 0.999  # Adam second-moment decay, in [0, 1).
    training.grad_clip = 0.0  # Global gradient norm clip (>= 0); 0 disables.
    training.ema_rates = (0.9999,)  # EMA decay rates; eval uses the first.
    training.ema_warmup = False  # Decay min(rate, (1 + n) / (10 + n)) at update n (short runs).
    # Chance a label becomes the null class, or a caption the empty one (guidance).
    training.label_dropout = 0.0
    training.grad_accum_steps = 1  # Micro-batches per optimizer step.
    training.log_every = 100  # Steps between logged metrics (and the non-finite check).
    training.sample_every = 10_000  # Steps between written sample grids; 0 disables.
    training.checkpoint_every = 5000  # Steps between checkpoints.
    training.keep_checkpoints = 3  # Checkpoints kept on disk.
    training.max_consecutive_skips = 10  # Non-finite updates in a row before training stops.
    training.kl_weight = 1e-6  # Autoencoder: weight of KL(q(z|x) || N(0, I)) (LDM).
    training.reconstruction_loss = "l1"  # Autoencoder: "l1" (LDM) or "l2", summed over pixels.
    # Autoencoder GAN (LDM's LPIPSWithDiscriminator; Esser et al. 2021): a PatchGAN trained with
    # the hinge loss, its term weighted adaptively at the decoder's last layer; 0 disables.
    training.disc_weight = 0.0  # Autoencoder: the adversarial term's weight (LDM: 0.5).
    training.disc_start = 0  # Autoencoder: first step with the adversarial terms (a warm-up).
    # Autoencoder perceptual term: LPIPS v0.1 with VGG16 (Zhang et al. 2018), added per pixel as
    # LDM does; needs a local weights file (diffax.tools.convert_lpips makes one).
    training.perceptual_weight = 0.0  # Autoencoder: LPIPS weight (LDM: 1.0); 0 disables.
    training.lpips_weights = ""  # Autoencoder: LPIPS .safetensors / .npz; "" skips the term.

    # Latent diffusion (Rombach et al. 2022): the denoiser runs on a frozen autoencoder's latents;
    # data.image_size and data.num_channels are then the latents' (the autoencoder's images are
    # data.image_size * f wide); data.num_levels stays the images'.
    config.latent = latent = ml_collections.ConfigDict()
    # "" (diffusion on pixels), "workdir" (a diffax autoencoder) or "sd_vae" (diffusers weights).
    latent.autoencoder = ""
    latent.autoencoder_workdir = _unset()  # "workdir": a trained diffax autoencoder's workdir.
    latent.sd_vae_weights = _unset()  # "sd_vae": a diffusers AutoencoderKL .safetensors or folder.
    # Latents are multiplied by this before diffusion; unset: read from the autoencoder workdir's
    # latent_stats.json (an SD VAE file has none: set 0.18215 for Stable Diffusion's).
    latent.scale = _unset(float)
    latent.cache_dir = _unset()  # Where the encoded splits are cached; unset: WORKDIR/latents.
    # "scalar": z = scale * latent (LDM); "per_channel": z = (latent - shift_c) * scale_c, with
    # each channel's mean and 1 / std from the autoencoder workdir's latent_stats.json.
    latent.normalization = "scalar"

    config.mesh = mesh = ml_collections.ConfigDict()
    mesh.data = -1  # Data-parallel axis size; -1 takes every device left after fsdp.
    mesh.fsdp = 1  # Parameter-sharding axis size.

    config.eval = ev = ml_collections.ConfigDict()
    ev.batch_size = 256  # Global batch for bits/dim and sampling.
    # diffax.evaluators to run, in order; () runs the model kind's defaults (a denoiser: "bpd",
    # "ode_bpd" with ode_bpd, "conditional_bpd" with conditional_bpd, "samples"; a classifier:
    # "classifier_accuracy"; an autoencoder: "reconstruction").
    ev.evaluators = ()
    ev.num_bpd_examples = -1  # Test examples for bits/dim (positive); -1 takes the whole split.
    ev.conditional_bpd = False  # Also report p(x|y) bits/dim of a class-conditional model.
    ev.bpd_t_samples = 1  # Continuous: low-discrepancy times per example for the bound.
    ev.ode_bpd = False  # Also report the probability-flow ODE bits/dim (diffax.ode_likelihood).
    ev.ode_tolerance = 1e-5  # PF-ODE: rtol = atol of the adaptive Dopri5 steps.
    ev.ode_divergence = "exact"  # PF-ODE: "exact" (small images) or "hutchinson" (large ones).
    ev.num_samples = 1000  # Samples to generate.
    # "ddpm", "ddim", or a diffax.solvers sampler: "dpmpp_2m", "dpmpp_3m", "dpmpp_2m_sde",
    # "unipc", "euler", "heun", "euler_ancestral", "ancestral".
    ev.sampler = "ddpm"
    ev.sample_steps = 0  # Respaced steps (solvers: grid points); 0 uses every step.
    # Solvers' timestep spacing: "auto" (Karras et al.'s eq. 5 from sigma 80 for euler / heun /
    # euler_ancestral, log-SNR for the others), "uniform", "logsnr", "karras", "ddim", "respace",
    # or a respacing spec such as "10,20".
    ev.sample_spacing = "auto"
    ev.solver_order = 0  # dpmpp_* / unipc order (1-3); 0 takes the sampler's own (2M: 2, 3M: 3).
    ev.ddim_eta = 0.0  # DDIM eta: 0 is deterministic, 1 matches DDPM's variance.
    # Classifier-free guidance w: 0 samples the conditional model, -1 the unconditional one (the
    # null class), w > 0 guides as (1 + w) cond - w uncond (Ho & Salimans 2022).
    ev.guidance_scale = 0.0
    ev.guidance_channels = 0  # Guide only the first k mean channels (DiT's code: 3); 0 guides all.
    ev.classifier_scale = 0.0  # Classifier guidance s (Dhariwal & Nichol 2021); 0 is off.
    ev.classifier_workdir = _unset()  # Workdir of a trained noisy classifier (for s > 0).
    ev.clip_denoised = True  # Clip predicted x0 to [-1, 1] while sampling.
    ev.use_ema = True  # Evaluate the EMA parameters (the first rate).
    ev.chain_frames = 20  # --mode=sample: frames of the reverse-chain animation; 0 writes none.
    ev.chain_samples = 10  # --mode=sample: samples shown in the animation.
    ev.quality_metrics = True  # Digits: Fréchet distance + class accuracy; else FID/IS/PR.
    ev.classifier_path = _unset()  # Digits classifier; unset: trained into the workdir.
    ev.inception_weights = _unset()  # FID Inception .npz; unset skips FID/IS/PR.
    ev.reference_stats = _unset()  # FID reference .npz; unset: eval_split, cached.
    ev.num_reference_examples = -1  # Eval-split examples for FID statistics (positive); -1: all.
    return config
