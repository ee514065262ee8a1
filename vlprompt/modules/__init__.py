"""Lightning modules hosting a frozen backbone and a prompt learner."""
