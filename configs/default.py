"""Every diffax config field with its default; experiment configs import this and override."""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  """Returns the default config: a small class-conditional model on the embedded digits."""
  config = ml_collections.ConfigDict()
  config.seed = 0  # Seeds parameter init, the data order and the training RNG.

  config.data = data = ml_collections.ConfigDict()
  data.dataset = "digits"  # A TFDS name (cifar10, imagenet_resized/64x64, ...), "digits" or "image_folder".
  data.data_dir = None  # TFDS data_dir; None uses TFDS's default (~/tensorflow_datasets).
  data.folder = None  # For dataset="image_folder": a folder of images, one subfolder per class or flat.
  data.image_size = 8  # Images are square; a TFDS dataset of another size is resized.
  data.num_channels = 1  # 1 for grayscale, 3 for RGB.
  data.num_levels = 17  # Intensity levels of the data: 256 for 8-bit images, 17 for the digits.
  data.num_classes = 10  # Classes of the labels; 0 for an unlabelled dataset.
  data.train_split = "train"  # TFDS split to train on.
  data.eval_split = "test"  # TFDS split to report bits/dim on.
  data.random_flip = False  # Random horizontal flips in training (not for digits: flipped digits differ).
  data.shuffle_buffer = 10_000  # tf.data shuffle buffer, in examples.
  data.skip_bad_images = False  # image_folder: skip (and count) undecodable files instead of failing.

  config.model = model = ml_collections.ConfigDict()
  model.ch = 64  # Base channel count of the U-Net.
  model.channel_mult = (1, 2)  # Channel multiplier per resolution; each step after the first halves H, W.
  model.num_res_blocks = 2  # Residual blocks per resolution.
  model.attention_resolutions = (4,)  # Resolutions (in pixels) with self-attention.
  model.num_heads = 4  # Attention heads, when num_head_channels is -1.
  model.num_head_channels = -1  # Channels per head; overrides num_heads when positive.
  model.dropout = 0.1  # Dropout in the residual blocks.
  model.resblock_updown = False  # BigGAN-style residual blocks for down/upsampling.
  model.use_scale_shift_norm = True  # Adaptive group norm from the embedding (Nichol & Dhariwal).
  model.class_cond = True  # Conditions on data labels (needs data.num_classes > 0).
  model.dtype = "float32"  # Compute dtype: "bfloat16" on accelerators; parameters stay float32.
  model.remat = False  # Activation checkpointing of the residual and attention blocks.

  config.diffusion = diffusion = ml_collections.ConfigDict()
  diffusion.schedule = "cosine"  # Beta schedule: "linear" or "cosine".
  diffusion.num_timesteps = 1000  # T of the training process.
  diffusion.mean_type = "eps"  # What the model predicts for the mean: "eps", "x0" or "v".
  diffusion.var_type = "learned_range"  # "fixed_small", "fixed_large", "learned" or "learned_range".
  diffusion.loss_type = "hybrid"  # "mse"/"simple", "rescaled_mse"/"hybrid", "kl", "rescaled_kl"/"vlb".
  diffusion.timestep_sampler = "uniform"  # "uniform" or "loss_second_moment" (importance sampling).

  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128  # Global batch, split over every device of every process.
  training.num_steps = 3000  # Optimizer steps in total.
  training.learning_rate = 1e-3  # Peak AdamW learning rate.
  training.warmup_steps = 200  # Linear warmup steps to the peak rate.
  training.weight_decay = 0.0  # AdamW decoupled weight decay.
  training.adam_b1 = 0.9
  training.adam_b2 = 0.999
  training.grad_clip = 1.0  # Global gradient norm clip; 0 disables.
  training.ema_rates = (0.999,)  # EMA decay rates; the first is the one eval uses.
  training.label_dropout = 0.1  # Probability of replacing a label by the null class (classifier-free guidance).
  training.grad_accum_steps = 1  # Micro-batches per optimizer step.
  training.log_every = 100  # Steps between logged metrics.
  training.sample_every = 1000  # Steps between written sample grids; 0 disables.
  training.checkpoint_every = 500  # Steps between checkpoints.
  training.keep_checkpoints = 3  # Checkpoints kept on disk.
  training.max_consecutive_skips = 10  # Non-finite updates in a row before training stops.

  config.mesh = mesh = ml_collections.ConfigDict()
  mesh.data = -1  # Data-parallel axis size; -1 takes every device left after fsdp.
  mesh.fsdp = 1  # Parameter-sharding axis size.

  config.eval = ev = ml_collections.ConfigDict()
  ev.batch_size = 256  # Global batch for bits/dim and sampling.
  ev.num_bpd_examples = -1  # Test examples for bits/dim; -1 takes the whole split.
  ev.num_samples = 100  # Samples to generate.
  ev.sampler = "ddpm"  # "ddpm" or "ddim".
  ev.sample_steps = 0  # Respaced steps for sampling; 0 uses every step of the process.
  ev.ddim_eta = 0.0  # DDIM eta: 0 is deterministic, 1 matches DDPM's variance.
  ev.guidance_scale = 0.0  # Classifier-free guidance w; 0 samples the conditional model.
  ev.clip_denoised = True  # Clip predicted x0 to [-1, 1] while sampling.
  ev.use_ema = True  # Evaluate the EMA parameters (the first rate).
  ev.quality_metrics = True  # Sample quality in eval: digits Fréchet distance + class accuracy, else FID/IS/PR.
  ev.classifier_path = None  # Digits classifier checkpoint; None trains one (~10 s) into WORKDIR/digits_classifier.
  ev.inception_weights = None  # FID Inception-v3 .npz (diffax/metrics/inception.py); None skips FID/IS/PR.
  ev.reference_stats = None  # FID reference .npz (mu, sigma or images); None: eval_split, cached beside the data.
  ev.num_reference_examples = -1  # Eval-split examples for the FID reference statistics; -1 takes all.
  return config
