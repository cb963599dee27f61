"""A1111's samplers as the project's own code, in k-diffusion's convention.

A sampler function takes a denoiser ``D(x, sigma) -> denoised``, the start latent, the sigma list
it walks and a noise sampler ``noise(sigma, sigma_next) -> standard normal like x``. ``kdiffusion``
holds the k-diffusion family, ``timesteps`` A1111's DDIM, PLMS and UniPC, ``restart`` the Restart
sampler. :mod:`pipeline.diffusion.samplers` maps A1111's labels onto them.
"""
