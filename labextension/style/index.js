import './base.css';
import './chart.css';
import './review.css';
