"""The role layer: what each role offers (`interfaces`), where it runs (`launcher`), and the Ray-backed
groups that serve a role from several processes (`ray_engines`, `ray_trainer`)."""
